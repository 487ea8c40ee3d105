"""Pre-flight: everything that can be checked is checked before any training, and nothing is written.

The configuration and its plugins, the outputs (results file, figures folder, work directory), the
given checkpoints, the device and the ranks, the metric chain (a trial on a tiny Dataset), the
dataset itself; then the pieces the grids are cut into. :func:`work_directory` and :func:`claim`
then give the run its work directory, a temporary one when nothing names it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from toolkit import distributed, probes as probing, results
from toolkit.config import AnalysisConfig, renamed
from toolkit.data import ImageDataset, reused
from toolkit.errors import PluginError, UsageError
from toolkit.hardware import check_compile, resolve_precision, stage_precision
from toolkit.metrics import check_metrics
from toolkit.plugins import Registration, blamed_on
from toolkit.stages import figures
from toolkit.stages.context import Run, plan
from toolkit.synthesis import SynthesisSettings, auto_batch_size
from toolkit.table import count
from toolkit.version import __version__
from toolkit.workdir import NOT_IN_IDENTITY, WorkDir, checkpoint_name, run_identity

DEFAULT_DATA_ROOT = Path(os.environ.get("TOOLKIT_DATA", "~/.cache/toolkit/data")).expanduser()
DEFAULT_RESULTS_DIR = Path("results")


def default_output(config: AnalysisConfig) -> Path:
    """``results/<model>-<dataset>-<hash>.nc``, the hash of every option that changes a number.

    The same command gets the same name, so rerunning it resumes an interrupted run (and refuses to
    overwrite a finished one); a different configuration gets a different file.
    """
    options = {k: v for k, v in json.loads(config.to_json()).items() if k not in NOT_IN_IDENTITY}
    digest = hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    safe_model = config.model.replace(":", "-").replace("/", "-")
    return DEFAULT_RESULTS_DIR / f"{safe_model}-{config.dataset}-{digest}.nc"


def default_work_dir(out: str | os.PathLike) -> Path:
    """``results/x.nc`` -> ``results/x.work``: the work directory of the run writing ``out``."""
    return Path(out).with_suffix(".work")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for, but CUDA is not available here; use cpu or auto")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def configuration(config: AnalysisConfig | None, options: Mapping[str, Any]) -> AnalysisConfig:
    """``config``, or one made of ``options`` (the fields of :class:`AnalysisConfig`), not both."""
    if config is None:
        options = renamed(options)
        fields = {f.name for f in dataclasses.fields(AnalysisConfig)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise UsageError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
        return AnalysisConfig(**options)
    if options:
        raise TypeError("pass either config or options, not both")
    return config


def prepare(config: AnalysisConfig, *, out: str | os.PathLike | None,
            work_dir: str | os.PathLike | None, checkpoints: str | os.PathLike | None,
            overwrite: bool, make_folder: bool, plots: bool, progress: bool) -> Run:
    """Every check before training, in order; the :class:`Run` they leave (``UsageError`` else).

    The work directory is ``work_dir``, else the one beside ``out`` (:func:`default_work_dir`),
    else a temporary one (:func:`work_directory`). With ``make_folder`` the folder of ``out`` is
    created, last.
    """
    resolved = plan(config)
    if out is not None:
        results.check_writable(out, overwrite, folder_may_be_missing=make_folder)
    if plots and out is not None and Path(out).parent.is_dir():  # fail before training, not after
        figures.check_folder(out, overwrite)
    if work_dir is None and out is not None:
        work_dir = default_work_dir(out)
    if work_dir is not None:
        WorkDir(work_dir).check()
    if checkpoints is not None:
        check_checkpoints(Path(checkpoints), config.intervals)
    device = resolve_device(config.device)
    check_compile(config.compile, device)
    world = distributed.world(device)
    if work_dir is not None and world.main:  # another run on it stops here, before loading any data
        WorkDir(work_dir).check_free()       # (rank 0 alone: the job's own ranks share the lock)
    device = distributed.device_for(world, device)
    probes = probing.of((resolved.synthesizer, *resolved.metrics))
    streams = check_metrics(resolved.metrics, config.metric_options, config.save, probes)
    if streams and out is None:
        raise UsageError(f"--save {','.join(streams)} with these metrics streams the tensors into "
                         "the results file, so it needs out= (or keep them with metrics cosine)")
    with world.main_first():  # rank 0 fetches a missing dataset; the others then read it
        data = load_dataset(resolved.dataset, config)
    config = config.with_dataset_defaults(resolved.dataset.metadata.get("defaults", {}))
    config = config.with_save_images_for(data.num_classes)
    shape = (data.num_classes, data.in_chans, data.image_size, data.train_images.shape[3])
    # rank 0's choice for every rank: the job's ranks compute one run, whatever hardware each has
    precision, precision_reason = world.from_main(
        lambda: resolve_precision(config.precision, device, shape[2:]))
    if config.precision == "auto":  # the run, its identity and its file hold what auto chose
        config = dataclasses.replace(config, precision=precision)
    batch_size = (auto_batch_size(device, shape[1:]) if config.batch_size == "auto"
                  else config.batch_size)
    block_rows = probing.block_rows_for(config.block_rows, data.num_classes, probes)
    synthesis = SynthesisSettings(lr=config.lr, loss_threshold=config.loss_threshold,
                                  max_steps=config.max_steps, fixed_steps=config.fixed_steps,
                                  batch_size=batch_size,
                                  precision=stage_precision(config.precision, "synthesis"),
                                  compile=config.compile is True)  # auto: synthesize.choose_compile
    if out is not None and make_folder and world.main:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    return Run(config=config, plan=resolved, data=data, device=device, world=world, probes=probes,
               streams=streams, shape=shape, synthesis=synthesis, block_rows=block_rows,
               pieces=distributed.blocks(config.seed_values, data.num_classes, batch_size, block_rows),
               work_dir=None if work_dir is None else Path(work_dir), progress=progress and world.main,
               precision_reason=precision_reason)


def load_dataset(registration: Registration, config: AnalysisConfig) -> ImageDataset:
    root = Path(config.data_root) if config.data_root else DEFAULT_DATA_ROOT
    with blamed_on(registration, "failed to load"):
        data = reused((registration.plugin, config.dataset, str(root.resolve()), config.download),
                      lambda: registration.obj(root, config.download))
    if not isinstance(data, ImageDataset):
        raise PluginError(f"dataset {registration.name!r} (plugin {registration.plugin!r}) returned "
                          f"{type(data).__name__}, not a toolkit.ImageDataset")
    return data


def check_checkpoints(folder: Path, intervals: tuple[float, ...]) -> None:
    """``UsageError`` unless ``folder`` holds one ``interval-<t>.pt`` per interval."""
    if not folder.is_dir():
        raise UsageError(f"--checkpoints {str(folder)!r} is not a folder; give the folder holding "
                         "interval-<t>.pt files")
    missing = [name for name in map(checkpoint_name, intervals) if not (folder / name).is_file()]
    if missing:
        found = sorted(p.name for p in folder.glob("interval-*.pt"))
        raise UsageError(f"--checkpoints {folder} lacks {', '.join(missing)} (one file per interval, "
                         f"named interval-<t>.pt); it holds: {', '.join(found) or 'none'}")


@contextlib.contextmanager
def work_directory(run: Run) -> Iterator[WorkDir]:
    """The run's work directory: ``run.work_dir``, or a temporary folder removed at the end (on
    error too) when there is none.

    Every stage saves and finds its work there, so a run without ``--out`` works as one with it.
    The ranks of a torchrun job share it: rank 0 makes the temporary folder and tells the others
    where it is, which serves the ranks of one node; a job spanning several nodes needs ``--out``
    (or ``work_dir``) on a filesystem they all see.
    """
    if run.work_dir is not None:
        work = WorkDir(run.work_dir)
        with contextlib.ExitStack() as held:
            # rank 0 locks it for the job (its ranks share it); every rank learns the verdict
            refusal = run.world.from_main(lambda: _lock(held, work))
            if refusal is not None:
                raise UsageError(refusal)
            yield work
        return
    temporary = Path(run.world.from_main(lambda: tempfile.mkdtemp(prefix="toolkit-work-")))
    try:
        yield WorkDir(temporary)
    finally:
        if run.world.main:
            shutil.rmtree(temporary, ignore_errors=True)


def _lock(held: contextlib.ExitStack, work: WorkDir) -> str | None:
    """Lock ``work`` for as long as ``held`` lasts; the refusal's message, or None."""
    try:
        held.enter_context(work.locked())
    except UsageError as exc:
        return str(exc)
    return None


def claim(run: Run, work: WorkDir, *, fresh: bool, checkpoints: str | os.PathLike | None) -> None:
    """Make ``work`` this run's (``fresh``: discarding an earlier run's files), and say what it resumes.

    Its identity is what fixes every number: the configuration, the data, the toolkit version, what
    ``"auto"`` resolved to on this device (it cuts the pieces) and the given weights.
    """
    identity = run_identity(run.config.to_json(), run.data, __version__)
    identity["pieces"] = {"batch_size": run.synthesis.batch_size, "block_rows": run.block_rows}
    identity["probes"] = [r.name for r in run.probes]
    if checkpoints is not None:
        identity["weights"] = {name: _file_digest(Path(checkpoints) / name)
                               for name in map(checkpoint_name, run.config.intervals)}
    with run.world.main_first():  # rank 0 alone may discard (--fresh); the others find its verdict
        resumed = work.claim(identity, fresh=fresh and run.world.main)
    if resumed and run.progress:
        print(f"resuming from {work.path}: {resumed} finished file(s)", file=sys.stderr)


def announce(run: Run, out: str | os.PathLike | None) -> None:
    """One line on stderr, with the progress bars: what runs, where, and where its file goes."""
    if not run.progress:
        return
    config = run.config
    seeds = config.seed_values
    ranks = f" x {run.world.size} ranks" if run.world.distributed else ""
    target = f"results -> {out}" if out is not None else "no results file"
    print(f"toolkit: {config.model} on {config.dataset}, "
          f"{count(len(config.intervals), 'interval', 'intervals')} "
          f"({','.join(f'{t:g}' for t in config.intervals)}), {count(len(seeds), 'seed', 'seeds')} "
          f"({seeds[0]}{f'-{seeds[-1]}' if len(seeds) > 1 else ''}), "
          f"synthesizer {config.synthesizer}, on {run.device}{ranks}; {target}"
          + (f" (work in {run.work_dir})" if run.work_dir is not None else ""), file=sys.stderr)


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
