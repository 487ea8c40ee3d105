"""The study, start to finish, as its stages (:mod:`toolkit.stages`, one module each).

Data flows one way: dataset -> model at each interval -> prototype grid ``P`` per (interval, seed)
-> penultimate features -> metric variables -> one ``xarray.Dataset`` (-> ``.nc``).
"""
from __future__ import annotations

import os
import time
from typing import Any

import xarray as xr

from toolkit.config import AnalysisConfig
from toolkit.progress import interactive
from toolkit.stages import assemble, figures, preflight, synthesize, train, write
from toolkit.stages.context import Plan, plan
from toolkit.stages.preflight import default_output, default_work_dir, resolve_device

# Kept here for the callers of toolkit.pipeline (the command line, ranking, tests).
__all__ = ["analyze", "Plan", "plan", "default_output", "default_work_dir", "resolve_device"]


def analyze(config: AnalysisConfig | None = None, *, out: str | os.PathLike | None = None,
            work_dir: str | os.PathLike | None = None, checkpoints: str | os.PathLike | None = None,
            fresh: bool = False, overwrite: bool = False, progress: bool | None = None,
            make_folder: bool = False, plots: bool = False, **options: Any) -> xr.Dataset:
    """Run the whole study and return its results Dataset (and write it when ``out`` is given).

    Every finished unit of work (the training state at each interval, each piece of a grid)
    is saved in the work directory as soon as it is done; a rerun skips it, and its results equal
    an uninterrupted run's (:mod:`toolkit.workdir`).

    Args:
        config: an :class:`AnalysisConfig`; or leave it out and pass its fields as keywords.
        out: path of the ``.nc`` file to write; no results file when None.
        work_dir: the run's work directory; default ``<out without .nc>.work`` when ``out`` is
            given, else a temporary folder removed at the end (under torchrun: made by rank 0 for
            the ranks of its node; a job on several nodes needs ``out`` or ``work_dir`` on a
            filesystem they all see). Once the results file is written it keeps the training
            checkpoints (``interval-<t>.pt``) and drops the prototypes and blocks.
        checkpoints: a folder of model weights, one file per interval (``interval-0.25.pt``, ...,
            named ``f"interval-{t:g}.pt"``; a ``state_dict`` of the model or of its network, or a
            work directory's training states), analysed instead of training.
        fresh: discard what an earlier run left in the work directory and start over.
        overwrite: replace an existing ``out``.
        progress: say what runs and show progress bars on stderr (a notebook's widgets in
            Jupyter); None (the default): when someone watches, a terminal or a notebook.
        make_folder: create the folder of ``out`` (after validation) if it does not exist.
        plots: draw the figures of the results into ``<out without .nc>.figures/``
            (:func:`toolkit.plot`); its folder is checked before any training.
        **options: fields of :class:`AnalysisConfig` (when ``config`` is None).

    Returns:
        The results Dataset; under torchrun (several ranks, :mod:`toolkit.distributed`) rank 0
        returns it and writes ``out``, the other ranks return None. Tensors streamed into the
        file (``--save C,R`` with ``cosine_summaries``) are read from it lazily.

    Raises:
        UsageError: bad options, unknown plugins, missing data or checkpoints, an existing ``out``,
            a work directory of another run; raised before any training, and nothing is written.
        NumericalError: NaN or Inf in training losses, synthesis losses or features (unless
            ``nonfinite="record"``); the work finished before it stays in the work directory.
    """
    config = preflight.configuration(config, options)
    if progress is None:
        progress = interactive()
    run = preflight.prepare(config, out=out, work_dir=work_dir, checkpoints=checkpoints,
                            overwrite=overwrite, make_folder=make_folder, plots=plots, progress=progress)
    with preflight.work_directory(run) as work:
        preflight.announce(run, out)
        preflight.claim(run, work, fresh=fresh, checkpoints=checkpoints)
        run.started = time.perf_counter()
        model = train.new_model(run)
        synthesize.choose_compile(run, model)
        stages, units = [], []
        for stage in train.intervals(run, model, work, checkpoints):
            stages.append(stage)
            units.append(synthesize.synthesize_interval(run, model, stage, work))
        if not run.add_up():
            # Rank 0 gathered the units; it alone measures, writes and prints. The others wait for
            # it, so that the job's ranks leave the process group together: a rank that left early
            # could be aborted by its communication threads when rank 0 left, failing the job.
            run.world.barrier()
            return None
        ds = assemble.dataset(run, stages, units)
        ds = assemble.measure(run, ds)
        ds = assemble.describe(run, ds)
        if out is not None:
            ds = write.results_file(run, ds, out, work, overwrite=overwrite)
            if plots:
                figures.draw(ds, out, overwrite=overwrite)
        run.world.barrier()
    return ds
