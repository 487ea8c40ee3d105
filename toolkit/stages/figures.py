"""The figures of the results, beside the results file (``<out without .nc>.figures/``).

:mod:`toolkit.plotting` (matplotlib) is imported only when a run draws or checks figures.
"""
from __future__ import annotations

import os

import xarray as xr


def check_folder(out: str | os.PathLike, overwrite: bool = False) -> None:
    """``UsageError`` when the figures folder of ``out`` holds figures and ``overwrite`` is off."""
    from toolkit import plotting

    plotting.check_folder(plotting.default_folder(out), overwrite=overwrite)


def draw(ds: xr.Dataset, out: str | os.PathLike, overwrite: bool = False) -> None:
    """Draw the figures of ``ds`` into the figures folder of ``out`` (:func:`toolkit.plot`)."""
    from toolkit import plotting

    plotting.plot(ds, plotting.default_folder(out), overwrite=overwrite)
