"""The results file: the Dataset written, the tensors streamed into it read back lazily."""
from __future__ import annotations

import os
from pathlib import Path

import xarray as xr

from toolkit import results
from toolkit.errors import WriteError
from toolkit.metrics import streamable
from toolkit.stages.context import Run
from toolkit.workdir import WorkDir, write_failure


def results_file(run: Run, ds: xr.Dataset, out: str | os.PathLike, work: WorkDir,
                 overwrite: bool = False) -> xr.Dataset:
    """Write ``ds`` to ``out`` and return it; the work directory then drops the units (its
    training checkpoints stay). Tensors streamed into the file (``--save C,R``) are never whole in
    memory: the Dataset returned reads them from the file."""
    streamed = {name: v for name, v in streamable(run.plan.metrics, ds).items() if name in run.streams}
    try:
        results.write_results(ds, out, overwrite=overwrite, streamed=streamed)
    except (OSError, RuntimeError) as exc:  # netCDF's "NetCDF: HDF error" on a full disk
        if isinstance(exc, RuntimeError) and not str(exc).startswith("NetCDF"):
            raise
        failure = write_failure(exc, Path(out).parent) if isinstance(exc, RuntimeError) else exc
        raise WriteError(f"could not write {out} ({failure.strerror or failure}); nothing was "
                         f"written, and {work.path} keeps all the finished work: free the space "
                         "and rerun the same command to write the file without redoing it") from exc
    if streamed:
        ds = ds.assign({name: xr.open_dataset(out, engine="netcdf4")[name] for name in streamed})
    work.discard_units()
    return ds
