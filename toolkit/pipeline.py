"""The study, start to finish: train through the intervals, synthesise, extract features, measure.

Data flows one way: dataset -> model at each interval -> prototype grid ``P`` per (interval, seed)
-> penultimate features -> metric variables -> one ``xarray.Dataset`` (-> ``.nc``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import xarray as xr

from toolkit import distributed, probes as probing, results
from toolkit.metrics import apply_metric, check_metrics, pairwise_tensors, streamable
from toolkit.config import AnalysisConfig
from toolkit.data import ImageDataset
from toolkit.errors import NumericalError, PluginError, UsageError
from toolkit.model import NormalizedClassifier, extract_features, frozen
from toolkit.plugins import Registration, blamed_on, get_registry
from toolkit.progress import progress_bar
from toolkit.synthesis import SynthesisResult, SynthesisSettings, auto_batch_size
from toolkit.training import Stage, Trainer, TrainingSettings, accuracy
from toolkit.version import __version__
from toolkit.workdir import (NOT_IN_IDENTITY, WorkDir, checkpoint_name, load_checkpoint,
                             model_weights, run_identity)

DEFAULT_DATA_ROOT = Path(os.environ.get("TOOLKIT_DATA", "~/.cache/toolkit/data")).expanduser()
DEFAULT_RESULTS_DIR = Path("results")


@dataclasses.dataclass(frozen=True)
class Plan:
    """A validated configuration with its plugins resolved."""

    config: AnalysisConfig
    model: Registration
    dataset: Registration
    synthesizer: Registration
    metrics: tuple[Registration, ...]


def plan(config: AnalysisConfig) -> Plan:
    """Resolve every plugin the configuration names; ``UsageError`` for an unknown one."""
    return Plan(
        config=config,
        model=get_registry("model").get(config.model),
        dataset=get_registry("dataset").get(config.dataset),
        synthesizer=get_registry("synthesizer").get(config.synthesizer),
        metrics=tuple(get_registry("metric").get(name) for name in config.metrics),
    )


def default_output(config: AnalysisConfig) -> Path:
    """``results/<model>-<dataset>-<hash>.nc``, the hash of every option that changes a number.

    The same command gets the same name, so rerunning it resumes an interrupted run (and refuses to
    overwrite a finished one); a different configuration gets a different file.
    """
    options = {k: v for k, v in json.loads(config.to_json()).items() if k not in NOT_IN_IDENTITY}
    digest = hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    safe_model = config.model.replace(":", "-").replace("/", "-")
    return DEFAULT_RESULTS_DIR / f"{safe_model}-{config.dataset}-{digest}.nc"


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


def load_dataset(registration: Registration, config: AnalysisConfig) -> ImageDataset:
    root = Path(config.data_root) if config.data_root else DEFAULT_DATA_ROOT
    with blamed_on(registration, "failed to load"):
        data = registration.obj(root, config.download)
    if not isinstance(data, ImageDataset):
        raise PluginError(f"dataset {registration.name!r} (plugin {registration.plugin!r}) returned "
                          f"{type(data).__name__}, not a toolkit.ImageDataset")
    return data


def build_model(registration: Registration, data: ImageDataset) -> NormalizedClassifier:
    """A fresh model for ``data`` from a model plugin, wrapped to take [0, 1] pixels."""
    shape = f"{data.in_chans}x{data.image_size}x{data.image_size}"
    with blamed_on(registration, f"cannot be built for {data.num_classes} classes of {shape} images"):
        net = registration.obj(data.num_classes, data.in_chans, data.image_size)
        return NormalizedClassifier(net, data.mean, data.std)


def synthesize_prototypes(model: NormalizedClassifier, synthesizer: Registration, noise: torch.Tensor,
                          settings: SynthesisSettings, progress=None) -> SynthesisResult:
    """The class prototypes of every seed of ``noise`` ``(seed, n, C, H, W)``, one work queue:
    ``p_c`` of seed ``s`` starts from ``noise[s, c]`` toward ``c``, at index ``s * n + c``."""
    seeds, n = noise.shape[:2]
    return _synthesize(model, synthesizer, noise.flatten(0, 1), torch.arange(n).repeat(seeds),
                       settings, progress)


def synthesize_rows(model: NormalizedClassifier, synthesizer: Registration,
                    prototypes: SynthesisResult, seeds: int, rows: range, settings: SynthesisSettings,
                    progress=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rows ``k`` in ``rows`` of the grids ``P`` of ``seeds`` seeds, one work queue.

    ``prototypes`` holds the class prototypes of those seeds (index ``s * n + c``, as
    :func:`synthesize_prototypes` returns them). Every ``P[s, k, j]`` with ``k != j`` starts from
    ``p_j`` of seed ``s`` toward ``k``; ``P[s, k, k]`` is ``p_k`` with the records of its synthesis
    from noise. Returns the images ``(seed, row, j, C, H, W)`` and records ``(seed, row, j)``.
    """
    n = len(prototypes.images) // seeds
    s, r, j = torch.meshgrid(torch.arange(seeds), torch.arange(len(rows)), torch.arange(n),
                             indexing="ij")
    k = torch.as_tensor(list(rows), dtype=torch.int64)[r]
    off = k != j
    origin = s * n + j                                  # the prototype each P[s, k, j] starts from
    moved = _synthesize(model, synthesizer, prototypes.images[origin[off]], k[off], settings, progress)
    images = prototypes.images[origin].clone()           # the diagonal is ready: p_k itself
    images[off] = moved.images
    records = {}
    for field in results.RECORDS:
        grid = getattr(prototypes, field)[origin].clone()
        grid[off] = getattr(moved, field)
        records[field] = grid
    return images, records


def synthesize_grid(model: NormalizedClassifier, synthesizer: Registration, num_classes: int,
                    noise: torch.Tensor, settings: SynthesisSettings,
                    progress=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The whole grids ``P`` (seed, k, j, C, H, W) and their records (seed, k, j) of the seeds of
    ``noise`` ``(seed, n, C, H, W)``: their prototypes as one work queue, then every row as another.

    :func:`analyze` runs the same two phases in fixed pieces (:func:`toolkit.distributed.blocks`),
    since the last bits of a step can depend on the micro-batch's make-up (measured: ResNet18 on
    the CPU at batch size 1); with one block per phase its grids are these.
    """
    prototypes = synthesize_prototypes(model, synthesizer, noise, settings, progress)
    return synthesize_rows(model, synthesizer, prototypes, noise.shape[0], range(num_classes),
                           settings, progress)


def _synthesize(model: NormalizedClassifier, synthesizer: Registration, start: torch.Tensor,
                targets: torch.Tensor, settings: SynthesisSettings, progress) -> SynthesisResult:
    device = next(model.parameters()).device
    result = synthesizer.obj(model, start.to(device), targets.to(device), settings, progress=progress)
    if not isinstance(result, SynthesisResult):
        raise PluginError(f"synthesizer {synthesizer.name!r} returned {type(result).__name__}, "
                          "not a toolkit.SynthesisResult")
    return result.check(start, synthesizer.name)


def analyze(config: AnalysisConfig | None = None, *, out: str | os.PathLike | None = None,
            work_dir: str | os.PathLike | None = None, checkpoints: str | os.PathLike | None = None,
            fresh: bool = False, overwrite: bool = False, progress: bool = False,
            make_folder: bool = False, plots: bool = False, **options: Any) -> xr.Dataset:
    """Run the whole study and return its results Dataset (and write it when ``out`` is given).

    Every finished unit of work (the training state at each interval, each piece of a grid)
    is saved in the work directory as soon as it is done; a rerun skips it, and its results equal
    an uninterrupted run's (:mod:`toolkit.workdir`).

    Args:
        config: an :class:`AnalysisConfig`; or leave it out and pass its fields as keywords.
        out: path of the ``.nc`` file to write; nothing is written when None.
        work_dir: the run's work directory; default ``<out without .nc>.work`` when ``out`` is
            given, else nothing is persisted. Once the results file is written it keeps the
            training checkpoints (``interval-<t>.pt``) and drops the prototypes and blocks.
        checkpoints: a folder of model weights, one file per interval (``interval-0.25.pt``, ...,
            named ``f"interval-{t:g}.pt"``; a ``state_dict`` of the model or of its network, or a
            work directory's training states), analysed instead of training.
        fresh: discard what an earlier run left in the work directory and start over.
        overwrite: replace an existing ``out``.
        progress: show progress bars on stderr.
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
    if config is None:
        config = AnalysisConfig(**_known_options(options))
    elif options:
        raise TypeError("pass either config or options, not both")
    resolved = plan(config)
    if out is not None:
        results.check_writable(out, overwrite, folder_may_be_missing=make_folder)
    if plots and out is not None and Path(out).parent.is_dir():  # fail before training, not after
        from toolkit import plotting

        plotting.check_folder(plotting.default_folder(out), overwrite=overwrite)
    if work_dir is None and out is not None:
        work_dir = default_work_dir(out)
    work = WorkDir(work_dir) if work_dir is not None else None
    if work is not None:
        work.check()
    if checkpoints is not None:
        _check_checkpoints(Path(checkpoints), config.intervals)
    device = resolve_device(config.device)
    world = distributed.world(device)
    device = distributed.device_for(world, device)
    progress = progress and world.main
    probes = probing.of((resolved.synthesizer, *resolved.metrics))
    streams = check_metrics(resolved.metrics, config.metric_options, config.save, probes)
    if streams and out is None:
        raise UsageError(f"--save {','.join(streams)} with these metrics streams the tensors into "
                         "the results file, so it needs out= (or keep them with metrics cosine)")
    if not world.main:
        world.barrier()  # rank 0 fetches a missing dataset first; the others then read it
    data = load_dataset(resolved.dataset, config)
    if world.main:
        world.barrier()
    config = config.with_dataset_defaults(resolved.dataset.metadata.get("defaults", {}))
    config = config.with_save_images_for(data.num_classes)

    if out is not None and make_folder and world.main:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    shape = (data.num_classes, data.in_chans, data.image_size, data.train_images.shape[3])
    batch_size = (auto_batch_size(device, shape[1:]) if config.batch_size == "auto"
                  else config.batch_size)
    block_rows = probing.block_rows_for(config.block_rows, data.num_classes, probes)
    pieces = distributed.blocks(config.seed_values, data.num_classes, batch_size, block_rows)
    if work is not None:
        identity = run_identity(config.to_json(), data, __version__)
        # What "auto" resolved to on this device fixes the pieces, so it must match on resume.
        identity["pieces"] = {"batch_size": batch_size, "block_rows": block_rows}
        if checkpoints is not None:
            identity["weights"] = {name: _file_digest(Path(checkpoints) / name)
                                   for name in map(checkpoint_name, config.intervals)}
        if world.main:  # rank 0 alone may discard (--fresh); the others then find its verdict
            resumed = work.claim(identity, fresh=fresh)
        world.barrier()
        if not world.main:
            resumed = work.claim(identity)
        if resumed and progress:
            print(f"resuming from {work.path}: {resumed} finished file(s)", file=sys.stderr)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    model = build_model(resolved.model, data).to(device)
    model = model.to(memory_format=torch.channels_last)
    training = TrainingSettings(epochs=config.epochs, lr=config.train_lr,
                                batch_size=config.train_batch_size, momentum=config.momentum,
                                weight_decay=config.weight_decay, crop_padding=config.crop_padding,
                                flip=config.flip, precision=config.precision)
    synthesis = SynthesisSettings(lr=config.lr, loss_threshold=config.loss_threshold,
                                  max_steps=config.max_steps, fixed_steps=config.fixed_steps,
                                  batch_size=batch_size, precision=config.precision,
                                  compile=config.compile)
    # Speed of the work done in this process (a resumed run does not count what it reused).
    seconds = dict.fromkeys(("training", "synthesis", "features", "metrics", "probes"), 0.0)
    image_steps = 0

    def bar(description: str, total: int | None, unit: str = "step"):
        return progress_bar(description, total, enabled=progress, unit=unit)

    trainer = None if checkpoints is not None else Trainer(
        model, data, config.intervals, config.schedule, training, config.seed, device, world=world)
    stages, units = [], []
    for fraction in config.intervals:
        clock = time.perf_counter()
        if trainer is None:
            stage = load_weights(model, resolved.model, Path(checkpoints) / checkpoint_name(fraction),
                                 data, device)
        elif work is not None and (state := work.load_training(fraction)) is not None:
            trainer.load_state_dict(state)
            stage = Stage(**state["stage"])
        else:
            stage = trainer.next_stage(bar)
            seconds["training"] += time.perf_counter() - clock
            if not stage.finite and config.nonfinite == "stop":
                raise NumericalError(f"training reached NaN or Inf losses before interval "
                                     f"{fraction:.0%}; lower --train_lr, or pass --nonfinite record "
                                     "to keep going")
            if work is not None and world.main:  # every rank holds the same state
                work.save_training(fraction, {**trainer.state_dict(), "stage": dataclasses.asdict(stage)})
        stages.append(stage)

        with frozen(model):
            made, steps_here = synthesize_interval(
                model, fraction, resolved.synthesizer, probes, shape, synthesis, pieces, config,
                work, world, seconds, bar=lambda total: bar(
                    f"probe {fraction:.0%} (acc {stage.test_accuracy:.3f})", total, unit="img"))
        image_steps += steps_here
        if world.main:
            units.append(made)

    spent = world.gather({**seconds, "image_steps": image_steps})
    if not world.main:
        return None  # rank 0 gathered the units; it alone measures, writes and prints
    # The grids of every rank count in image_steps, so their time does too (process-seconds);
    # training ran on all ranks at once and keeps rank 0's wall time.
    for stage in ("synthesis", "features", "probes"):
        seconds[stage] = sum(part[stage] for part in spent)
    image_steps = sum(part["image_steps"] for part in spent)
    images = {name: np.stack([[unit[name] for unit in row] for row in units])
              for name in units[0][0] if probing.is_image(name)}
    probe_dims = probing.variables(probes)
    images["noise"] = results.to_uint8(initial_noise(shape, config.seed_values).numpy())
    ds = results.build_dataset(
        intervals=[s.fraction for s in stages], seeds=config.seed_values,
        class_names=data.class_names,
        features=np.stack([[unit["features"] for unit in row] for row in units]),
        records={name: np.stack([[unit[name] for unit in row] for row in units])
                 for name in units[0][0] if name != "features" and not probing.is_image(name)
                 and name not in probe_dims},
        test_accuracy=[s.test_accuracy for s in stages], train_size=[s.train_size for s in stages],
        images=images)
    ds = probing.assign(ds, units, probes)
    clock = time.perf_counter()
    for registration in resolved.metrics:
        ds = apply_metric(ds, registration, config.metric_options.get(registration.name, {}))
    seconds["metrics"] = time.perf_counter() - clock
    if config.save is not None:  # the summaries stay; the tensors not asked for go
        ds = ds.drop_vars([name for name in pairwise_tensors(ds) if name not in config.save])
    ds.attrs.update(results.provenance(
        config.to_json(), model=config.model, dataset=config.dataset,
        synthesizer=config.synthesizer, metrics=",".join(config.metrics), device=str(device),
        ranks=world.size,
        wall_time_s=round(time.perf_counter() - started, 3)))
    ds.attrs.update(results.speed_attrs(
        **{f"time_{stage}_s": value for stage, value in seconds.items()},
        image_steps=image_steps, precision=config.precision, compile=config.compile,
        synthesis_batch_size=batch_size))
    if out is not None:
        streamed = {name: v for name, v in streamable(resolved.metrics, ds).items() if name in streams}
        results.write_results(ds, out, overwrite=overwrite, streamed=streamed)
        if streamed:  # what was never whole in memory is read back lazily from the file
            ds = ds.assign({name: xr.open_dataset(out, engine="netcdf4")[name] for name in streamed})
        if work is not None:
            work.discard_units()
        if plots:
            from toolkit import plotting

            plotting.plot(ds, plotting.default_folder(out), overwrite=overwrite)
    return ds


def synthesize_interval(model: NormalizedClassifier, fraction: float, synthesizer: Registration,
                        probes: list[Registration], shape: tuple[int, ...],
                        settings: SynthesisSettings, pieces: list[distributed.Block],
                        config: AnalysisConfig, work: WorkDir | None, world: distributed.World,
                        seconds: dict[str, float], bar) -> tuple[list[dict[str, np.ndarray]] | None, int]:
    """One interval's grids, each rank doing its share; returns one unit per seed (the arrays of
    its whole grid, in seed order) on rank 0, None on the others, and the image-steps this rank ran.

    Two phases, each in fixed pieces that are one work queue each (:mod:`toolkit.distributed`):
    the class prototypes of groups of seeds, which the ranks share through the work directory (or
    the network, without one), and the ``pieces`` (blocks of rows) of the grids. Each piece is saved in the work directory when finished and reused
    there only whole: a piece not on disk is synthesised again exactly as an uninterrupted run of
    any number of ranks synthesises it. ``bar(total)`` makes this rank's progress bar.
    """
    n, seeds, device = shape[0], config.seed_values, next(model.parameters()).device

    def left_to_do() -> tuple[list[distributed.Block], list[list[int]]]:
        todo = [block for block in pieces if work is None
                or not all(work.unit(fraction, seed, block.rows).is_file() for seed in block.seeds)]
        needed = {seed for block in todo for seed in block.seeds}
        groups = [group for group in distributed.seed_groups(seeds, n, settings.batch_size)
                  if needed.intersection(group) and (work is None or not all(
                      work.prototypes(fraction, seed).is_file() for seed in group))]
        return todo, groups

    # Rank 0 alone looks at the work directory and tells the others (before anyone adds a file),
    # so every rank works through the same lists even where a shared filesystem shows files late.
    todo, groups = world.broadcast(left_to_do() if world.main else None)
    # This rank's bar counts its own images: all of them in one process; under torchrun, the
    # ranks take pieces as they go, so rank 0's share is not known in advance.
    progress = bar(None if world.distributed else
                   sum(len(group) * n for group in groups) + sum(block.images(n) for block in todo))
    image_steps, made = 0, {}
    for number in distributed.claim(world, [len(group) for group in groups]):
        group = groups[number]
        clock = time.perf_counter()
        result = synthesize_prototypes(model, synthesizer, initial_noise(shape, group), settings,
                                       progress.update)
        seconds["synthesis"] += time.perf_counter() - clock
        image_steps += int(result.steps.sum())
        for index, seed in enumerate(group):
            made[seed] = {name: getattr(result, name)[index * n:(index + 1) * n].numpy()
                          for name in ("images", *results.RECORDS)}
            if work is not None:
                work.save_prototypes(fraction, seed, made[seed])
    if work is None:  # nowhere to share them but the network
        prototypes = {seed: arrays for part in world.all_gather(made) for seed, arrays in part.items()}
    else:  # every rank reads what it needs from the work directory, once all are written
        prototypes = dict(made)
        world.barrier()

    def prototypes_of(seed: int) -> dict[str, np.ndarray]:
        if seed not in prototypes:  # from the work directory; a rank's next blocks mostly share it
            if len(prototypes) > len(made) + 1:
                del prototypes[next(s for s in prototypes if s not in made)]
            prototypes[seed] = _finished(work.load_prototypes(fraction, seed),
                                         work.prototypes(fraction, seed))
        return prototypes[seed]

    done = {}
    for number in distributed.claim(world, [block.images(n) for block in todo]):
        block = todo[number]
        start = [prototypes_of(seed) for seed in block.seeds]
        start = SynthesisResult(**{name: torch.from_numpy(np.concatenate([p[name] for p in start]))
                                   for name in ("images", *results.RECORDS)})
        diagonal = (torch.arange(len(block.rows)), torch.as_tensor(list(block.rows)))
        clock = time.perf_counter()
        grid, records = synthesize_rows(model, synthesizer, start, len(block.seeds), block.rows,
                                        settings, progress.update)
        seconds["synthesis"] += time.perf_counter() - clock
        image_steps += int(records["steps"].sum() - records["steps"][:, diagonal[0], diagonal[1]].sum())
        clock = time.perf_counter()
        feats = extract_features(model, grid.flatten(0, 2), device=device)
        feats = feats.view(*grid.shape[:3], -1).numpy()
        seconds["features"] += time.perf_counter() - clock
        clock = time.perf_counter()
        probed = probing.run_probes(probes, model, grid, records, settings, rows=block.rows,
                            prototypes=start.images.view(len(block.seeds), *shape))
        seconds["probes"] += time.perf_counter() - clock
        for index, seed in enumerate(block.seeds):
            unit = {"features": feats[index],
                    **{name: value[index].numpy() for name, value in records.items()},
                    "prototypes": results.to_uint8(grid[index][diagonal].numpy()),
                    **({"P": results.to_uint8(grid[index].numpy())} if config.save_images else {}),
                    **{name: value[index] for name, value in probed.items()
                       if config.save_images or not probing.is_image(name)}}
            if work is not None:  # kept even when faulty: --nonfinite record may reuse it
                work.save_unit(fraction, seed, block.rows, unit)
            done[seed, block.start] = unit
            _check_finite(unit, fraction, seed, config.nonfinite, block.rows)
    progress.close()

    gathered = world.gather(done)
    if not world.main:
        return None, image_steps
    for part in gathered:
        done.update(part)
    units = []
    for seed in seeds:
        parts = [done[seed, block.start] if (seed, block.start) in done
                 else _finished(work.load_unit(fraction, seed, block.rows),
                                work.unit(fraction, seed, block.rows))
                 for block in pieces if seed in block.seeds]
        unit = parts[0] if len(parts) == 1 else {
            name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        _check_finite(unit, fraction, seed, config.nonfinite)
        units.append(unit)
    return units, image_steps


def _finished(arrays: dict[str, np.ndarray] | None, path: Path) -> dict[str, np.ndarray]:
    """What a finished piece's file holds; one line when it has gone missing during the run."""
    if arrays is None:
        raise UsageError(f"{path} was finished but is gone from the work directory (all ranks "
                         "must see the same work directory); rerun the same command to redo it")
    return arrays


def initial_noise(shape: tuple[int, ...], seeds: list[int]) -> torch.Tensor:
    """The uniform noise the class prototypes of each seed start from, ``(seed, *shape)``: the
    same at every interval, and drawn again for the results file rather than kept."""
    return torch.stack([torch.rand(shape, generator=torch.Generator().manual_seed(seed))
                        for seed in seeds])


def default_work_dir(out: str | os.PathLike) -> Path:
    """``results/x.nc`` -> ``results/x.work``: the work directory of the run writing ``out``."""
    return Path(out).with_suffix(".work")


def load_weights(model: NormalizedClassifier, registration: Registration, path: Path,
                 data: ImageDataset, device: torch.device) -> Stage:
    """Load one interval's weights from ``path`` into ``model`` and return the :class:`Stage` they give.

    ``path`` holds a ``state_dict`` of the whole classifier or of the model plugin's network alone,
    or a work directory's training state (whose stage record gives the training-set size; for the
    others it is unknown, recorded as -1).
    """
    state = load_checkpoint(path)
    weights = model_weights(state, path)
    whole = {"mean", "std"} <= set(weights) and all(
        name.startswith("model.") or name in ("mean", "std") for name in weights)
    shape = f"{data.in_chans}x{data.image_size}x{data.image_size}"
    try:
        (model if whole else model.model).load_state_dict(weights)
    except RuntimeError as exc:
        problem = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise UsageError(f"checkpoint {path} does not fit model {registration.name!r} for "
                         f"{data.num_classes} classes of {shape} images: {problem}") from None
    model.to(device)
    recorded = state.get("stage") if isinstance(state.get("stage"), dict) else {}
    return Stage(fraction=float(path.stem.split("-", 1)[1]),
                 train_size=int(recorded.get("train_size", -1)),
                 test_accuracy=accuracy(model, data.test_images, data.test_labels, device))


def _check_checkpoints(folder: Path, intervals: tuple[float, ...]) -> None:
    if not folder.is_dir():
        raise UsageError(f"--checkpoints {str(folder)!r} is not a folder; give the folder holding "
                         "interval-<t>.pt files")
    missing = [name for name in map(checkpoint_name, intervals) if not (folder / name).is_file()]
    if missing:
        found = sorted(p.name for p in folder.glob("interval-*.pt"))
        raise UsageError(f"--checkpoints {folder} lacks {', '.join(missing)} (one file per interval, "
                         f"named interval-<t>.pt); it holds: {', '.join(found) or 'none'}")


def _check_finite(unit: Mapping[str, np.ndarray], fraction: float, seed: int, mode: str,
                  rows: range | None = None) -> None:
    bad = ~(np.isfinite(unit["features"]).all(-1) & np.isfinite(unit["loss"]))
    if bad.any() and mode == "stop":
        where = ("" if rows is None or len(rows) == bad.shape[-1] else f", row k = {rows.start}"
                 if len(rows) == 1 else f", rows k = {rows.start} to {rows.stop - 1}")
        raise NumericalError(f"interval {fraction:.0%}, seed {seed}{where}: {int(bad.sum())} of {bad.size} "
                             "images have NaN or Inf losses or features; lower --lr, or pass "
                             "--nonfinite record to record them and continue")


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _known_options(options: Mapping[str, Any]) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(AnalysisConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
    return dict(options)
