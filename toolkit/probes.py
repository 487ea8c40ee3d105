"""The probe protocol: plugins that measure the model itself on each piece of each grid.

A probe is registered with ``register_probes`` (a :class:`toolkit.Probe`); a synthesizer or metric
registered with ``probe="<name>"`` has it run with the model at hand on every piece of the grids
an interval synthesises (see :func:`run_probes`); what it returns becomes the variables it
declares. This module is the one place that knows how probes are called, which of their outputs
are images, and how their variables join the results.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from toolkit import results, schema
from toolkit.errors import PluginError, UsageError
from toolkit.plugins import Registration, blamed_on, get_registry
from toolkit.synthesis import SynthesisSettings


def of(registrations: Sequence[Registration]) -> list[Registration]:
    """The probes (registrations of kind ``probe``) that a run's synthesizer and metrics name with
    ``probe="<name>"``, each once, in the order named."""
    names = [r.metadata["probe"] for r in registrations if r.metadata.get("probe") is not None]
    if not names:
        return []
    registry = get_registry("probe")
    found: dict[str, Registration] = {}
    for r in registrations:
        name = r.metadata.get("probe")
        if name is None or name in found:
            continue
        if not isinstance(name, str) or name not in registry:
            raise PluginError(f"{r.kind} {r.name!r} (plugin {r.plugin!r}) needs probe {name!r}, "
                              f"which no installed plugin registers; probes: "
                              f"{', '.join(registry.names()) or '(none)'}")
        found[name] = registry.get(name)
    return list(found.values())


def is_image(name: str) -> bool:
    """Whether a unit's or probe's array ``name`` is an image (stored as uint8 pixels)."""
    return name in schema.images()


def variables(probes: Sequence[Registration]) -> dict[str, tuple[str, ...]]:
    """The non-image variables the ``probes`` add, with their dims."""
    return {name: v.dims for r in probes for name, v in r.obj.variables.items() if not v.image}


def add_trial_variables(trial: xr.Dataset, probes: Sequence[Registration]) -> xr.Dataset:
    """``trial`` (a made-up results dataset) with random values for the probes' variables, as a
    run would have them before its metrics."""
    rng = np.random.default_rng(1)
    return trial.assign({name: (dims, rng.random([trial.sizes.get(d, 2) for d in dims]))
                         for name, dims in variables(probes).items()})


def assign(ds: xr.Dataset, units: Sequence[Sequence[Mapping[str, np.ndarray]]],
           probes: Sequence[Registration]) -> xr.Dataset:
    """``ds`` with the probes' non-image variables from ``units`` (interval, seed) added."""
    return ds.assign({name: (v.dims, np.stack([[unit[name] for unit in row] for row in units]),
                             dict(v.attrs))
                      for r in probes for name, v in r.obj.variables.items() if not v.image})


def run_probes(probes: list[Registration], model: torch.nn.Module, grid: torch.Tensor,
               records: Mapping[str, torch.Tensor], settings: SynthesisSettings,
               rows: range | None = None, prototypes: torch.Tensor | None = None
               ) -> dict[str, np.ndarray]:
    """What the ``probes`` measure on one interval's grids, model at hand.

    Each probe's ``run(model, grid, records, settings)`` is called on the grids ``P`` (seed, k, j,
    C, H, W) of each interval; it returns arrays ``name -> (seed, ...)`` that become its declared
    variables (whose first two dims are ``interval, seed``). On a block of rows (``rows``, the
    ``k`` of each row of ``grid``; ``prototypes`` ``(seed, n, C, H, W)`` every class prototype of
    its seeds), a probe registered with ``blocks=True`` is given them and returns arrays ``(seed,
    row, ...)``; the others are only ever given whole grids.
    """
    out: dict[str, np.ndarray] = {}
    whole = rows is None or (rows.start == 0 and rows.stop == grid.shape[2])
    for registration in probes:
        dims = {name: v.dims for name, v in registration.obj.variables.items()}
        blocked = rows is not None and probe_takes_rows(registration)
        if not (whole or blocked):
            raise PluginError(f"{_who(registration)} takes whole grids only"
                              f", but was given rows {rows.start} to {rows.stop - 1}")
        keywords = {"rows": rows, "prototypes": prototypes} if blocked else {}
        with blamed_on(registration, "failed"):
            produced = registration.obj.run(model, grid, records, settings, **keywords)
        if not isinstance(produced, Mapping):
            raise PluginError(f"{_who(registration)} returned {type(produced).__name__}, "
                              "not a mapping of variable names to arrays")
        missing, extra = sorted(set(dims) - set(produced)), sorted(set(produced) - set(dims))
        if missing or extra:
            raise PluginError(f"{_who(registration)} must return exactly its variables "
                              f"{', '.join(dims)}; " + "; ".join(
                                  f"{what} {', '.join(names)}" for what, names in
                                  (("missing", missing), ("unexpected", extra)) if names))
        for name, value in produced.items():
            with blamed_on(registration, f"returned {name} that is not an array"):
                value = (value.detach().cpu().numpy() if isinstance(value, torch.Tensor)
                         else np.asarray(value))
            if value.ndim != len(dims[name]) - 1:
                raise PluginError(f"{_who(registration)} returned {name} "
                                  f"with {value.ndim} dims; expected {len(dims[name]) - 1} "
                                  f"({', '.join(dims[name][1:])})")
            if blocked and tuple(value.shape[:2]) != tuple(grid.shape[:2]):
                raise PluginError(f"{_who(registration)} returned {name} "
                                  f"of shape {tuple(value.shape)} for a block of "
                                  f"{grid.shape[0]} seed(s) x {grid.shape[1]} row(s); its leading "
                                  f"dims must be {tuple(grid.shape[:2])}")
            out[name] = results.to_uint8(value) if registration.obj.variables[name].image else value
    return out


def _who(registration: Registration) -> str:
    return f"probe {registration.name!r} (plugin {registration.plugin!r})"


def probe_takes_rows(registration: Registration) -> bool:
    """Whether a probe can run on blocks of rows of the grids (see :func:`whole_only`)."""
    return whole_only(registration) is None


def whole_only(registration: Registration) -> str | None:
    """Why a probe takes whole grids only, or None when it can take blocks of rows: it must be
    registered with ``blocks=True``, and each of its variables must have ``k`` or ``class`` after
    ``interval, seed`` (the dimension blocks cut)."""
    if not registration.obj.blocks:
        return "registered without blocks=True"
    for name, variable in registration.obj.variables.items():
        dims = variable.dims
        if len(dims) < 3 or dims[2] not in ("k", "class"):
            return f"its variable {name} has {', '.join(dims)}, not k or class after interval, seed"
    return None


def block_rows_for(block_rows: int | str, num_classes: int, probes: list[Registration]) -> int | str:
    """``block_rows`` as the run can use it: whole grids when a probe cannot take blocks of rows."""
    whole = [(r, reason) for r in probes if (reason := whole_only(r)) is not None]
    if not whole:
        return block_rows
    if block_rows != "auto" and block_rows < num_classes:
        r, reason = whole[0]
        raise UsageError(f"--block_rows {block_rows}: probe {r.name!r} (plugin "
                         f"{r.plugin!r}) takes whole grids only ({reason}); leave --block_rows at auto")
    return num_classes
