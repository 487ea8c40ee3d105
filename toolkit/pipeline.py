"""The study, start to finish: train through the intervals, synthesise, extract features, measure.

Data flows one way: dataset -> model at each interval -> prototype grid ``P`` per (interval, seed)
-> penultimate features -> metric variables -> one ``xarray.Dataset`` (-> ``.nc``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import xarray as xr

from toolkit import results
from toolkit.config import AnalysisConfig
from toolkit.data import ImageDataset
from toolkit.errors import PluginError, ToolkitError, UsageError
from toolkit.model import NormalizedClassifier, extract_features, frozen
from toolkit.plugins import Registration, get_registry
from toolkit.progress import progress_bar
from toolkit.synthesis import SynthesisResult, SynthesisSettings, auto_batch_size
from toolkit.training import TrainingSettings, train_through_intervals

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
    """``results/<model>-<dataset>-<UTC time>.nc``: a new name each run, so nothing is overwritten."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    safe_model = config.model.replace(":", "-").replace("/", "-")
    return DEFAULT_RESULTS_DIR / f"{safe_model}-{config.dataset}-{stamp}.nc"


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


def check_metrics(metrics: tuple[Registration, ...], options: Mapping[str, Mapping[str, Any]]) -> None:
    """Run the metric chain on a small made-up results dataset, so that a metric that cannot run
    (a wrong order, a bad option) fails before hours of training, not after."""
    # 2 intervals, 2 seeds, 3 classes, 4 features
    trial = results.dataset_from_features(np.random.default_rng(0).random((2, 2, 3, 3, 4)))
    for registration in metrics:
        _check_metric_options(registration, options.get(registration.name, {}))
        with blamed_on(registration, "failed on a trial dataset before training"):
            trial = apply_metric(trial, registration, options.get(registration.name, {}))


@contextlib.contextmanager
def blamed_on(registration: Registration, what: str) -> Iterator[None]:
    """Turn a plugin's own failure into one line naming the plugin, not a traceback."""
    try:
        yield
    except ToolkitError:
        raise
    except Exception as exc:
        raise PluginError(f"{registration.kind} {registration.name!r} (plugin "
                          f"{registration.plugin!r}) {what}: {type(exc).__name__}: {exc}") from exc


def synthesize_grid(model: NormalizedClassifier, synthesizer: Registration, num_classes: int,
                    noise: torch.Tensor, settings: SynthesisSettings,
                    progress=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The grids ``P`` (seed, k, j, C, H, W) and their records (seed, k, j) for one model.

    ``noise`` is ``(seed, n, C, H, W)``. Class prototypes ``p_c`` start from ``noise[s, c]`` toward
    ``c``; then every ``P[s, k, j]`` with ``k != j`` starts from ``p_j`` of seed ``s`` toward ``k``.
    The diagonal holds the prototypes themselves, with the records of their synthesis from noise.
    All seeds share one work queue per phase, so micro-batches stay full; the images do not
    interact, so this gives each the result it would get alone.
    """
    n, seeds = num_classes, noise.shape[0]
    device = next(model.parameters()).device

    def run(start: torch.Tensor, targets: torch.Tensor) -> SynthesisResult:
        result = synthesizer.obj(model, start.to(device), targets.to(device), settings,
                                 progress=progress)
        if not isinstance(result, SynthesisResult):
            raise PluginError(f"synthesizer {synthesizer.name!r} returned {type(result).__name__}, "
                              "not a toolkit.SynthesisResult")
        return result.check(start, synthesizer.name)

    prototypes = run(noise.flatten(0, 1), torch.arange(n).repeat(seeds))     # index s * n + c
    s, k, j = torch.meshgrid(torch.arange(seeds), torch.arange(n), torch.arange(n), indexing="ij")
    off = k != j
    origin = s * n + j                                  # the prototype each P[s, k, j] starts from
    moved = run(prototypes.images[origin[off]], k[off])

    images = prototypes.images[origin].clone()           # (seed, k, j, C, H, W); diagonal ready
    images[off] = moved.images
    records = {}
    for field in ("steps", "loss", "converged", "predicted", "confidence"):
        grid = getattr(prototypes, field)[origin].clone()  # the diagonal's records: the prototypes'
        grid[off] = getattr(moved, field)
        records[field] = grid
    return images, records


def analyze(config: AnalysisConfig | None = None, *, out: str | os.PathLike | None = None,
            checkpoints: str | os.PathLike | None = None, overwrite: bool = False,
            progress: bool = False, make_folder: bool = False, **options: Any) -> xr.Dataset:
    """Run the whole study and return its results Dataset (and write it when ``out`` is given).

    Args:
        config: an :class:`AnalysisConfig`; or leave it out and pass its fields as keywords.
        out: path of the ``.nc`` file to write; nothing is written when None.
        checkpoints: folder for the model's ``state_dict`` at each interval
            (``interval-0.25.pt``, ...); none are saved when None.
        overwrite: replace an existing ``out`` and checkpoints in ``checkpoints``.
        progress: show progress bars on stderr.
        make_folder: create the folder of ``out`` (after validation) if it does not exist.
        **options: fields of :class:`AnalysisConfig` (when ``config`` is None).

    Raises:
        UsageError: bad options, unknown plugins, missing data or an existing ``out``; raised before
            any training, and nothing is written.
    """
    if config is None:
        config = AnalysisConfig(**_known_options(options))
    elif options:
        raise TypeError("pass either config or options, not both")
    resolved = plan(config)
    if out is not None:
        results.check_writable(out, overwrite, folder_may_be_missing=make_folder)
    if checkpoints is not None:
        _check_checkpoint_dir(Path(checkpoints), overwrite, folder_may_be_missing=make_folder)
    device = resolve_device(config.device)
    check_metrics(resolved.metrics, config.metric_options)
    data = load_dataset(resolved.dataset, config)
    config = config.with_dataset_defaults(resolved.dataset.metadata.get("defaults", {}))

    if out is not None and make_folder:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    model = build_model(resolved.model, data).to(device)
    model = model.to(memory_format=torch.channels_last)
    training = TrainingSettings(epochs=config.epochs, lr=config.train_lr,
                                batch_size=config.train_batch_size, momentum=config.momentum,
                                weight_decay=config.weight_decay, crop_padding=config.crop_padding,
                                flip=config.flip, precision=config.precision)
    shape = (data.num_classes, data.in_chans, data.image_size, data.train_images.shape[3])
    batch_size = (auto_batch_size(device, shape[1:]) if config.batch_size == "auto"
                  else config.batch_size)
    synthesis = SynthesisSettings(lr=config.lr, loss_threshold=config.loss_threshold,
                                  max_steps=config.max_steps, fixed_steps=config.fixed_steps,
                                  batch_size=batch_size, precision=config.precision,
                                  compile=config.compile)
    seconds = dict.fromkeys(("training", "synthesis", "features", "metrics"), 0.0)

    def bar(description: str, total: int, unit: str = "step"):
        return progress_bar(description, total, enabled=progress, unit=unit)

    features, records, stages = [], [], []
    clock = time.perf_counter()
    for stage in train_through_intervals(model, data, config.intervals, config.schedule, training,
                                         config.seed, device, progress=bar):
        seconds["training"] += time.perf_counter() - clock
        stages.append(stage)
        if checkpoints is not None:
            save_checkpoint(model, Path(checkpoints) / f"interval-{stage.fraction:g}.pt")
        synth_bar = bar(f"probe {stage.fraction:.0%} (acc {stage.test_accuracy:.3f})",
                        config.seeds * data.num_classes ** 2, unit="img")
        noise = torch.stack([torch.rand(shape, generator=torch.Generator().manual_seed(seed))
                             for seed in config.seed_values])
        with frozen(model):
            clock = time.perf_counter()
            grid, grid_records = synthesize_grid(model, resolved.synthesizer, data.num_classes,
                                                 noise, synthesis, progress=synth_bar.update)
            seconds["synthesis"] += time.perf_counter() - clock
            clock = time.perf_counter()
            feats = extract_features(model, grid.flatten(0, 2), device=device)
            seconds["features"] += time.perf_counter() - clock
        synth_bar.close()
        features.append(feats.view(*grid.shape[:3], -1).numpy())
        records.append({name: value.numpy() for name, value in grid_records.items()})
        clock = time.perf_counter()

    ds = results.build_dataset(
        intervals=[s.fraction for s in stages], seeds=config.seed_values,
        class_names=data.class_names, features=np.stack(features),
        records={name: np.stack([r[name] for r in records]) for name in records[0]},
        test_accuracy=[s.test_accuracy for s in stages], train_size=[s.train_size for s in stages])
    clock = time.perf_counter()
    for registration in resolved.metrics:
        ds = apply_metric(ds, registration, config.metric_options.get(registration.name, {}))
    seconds["metrics"] = time.perf_counter() - clock
    ds.attrs.update(results.provenance(
        config.to_json(), model=config.model, dataset=config.dataset,
        synthesizer=config.synthesizer, metrics=",".join(config.metrics), device=str(device),
        wall_time_s=round(time.perf_counter() - started, 3)))
    ds.attrs.update(results.speed_attrs(
        **{f"time_{stage}_s": value for stage, value in seconds.items()},
        image_steps=int(ds["steps"].sum()), precision=config.precision, compile=config.compile,
        synthesis_batch_size=batch_size))
    if out is not None:
        results.write_results(ds, out, overwrite=overwrite)
    return ds


def save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Save the ``state_dict`` (weights only, no pickled code) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


def _check_checkpoint_dir(folder: Path, overwrite: bool, folder_may_be_missing: bool = False) -> None:
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"checkpoint folder {str(folder)!r} is a file")
    if folder.is_dir() and any(folder.glob("interval-*.pt")) and not overwrite:
        raise UsageError(f"{folder} already holds checkpoints; pass --overwrite or choose another --out")
    if not folder.parent.is_dir() and not folder_may_be_missing:
        raise UsageError(f"checkpoint folder's parent {str(folder.parent)!r} does not exist")


def apply_metric(ds: xr.Dataset, registration: Registration, options: Mapping[str, Any]) -> xr.Dataset:
    """Merge what one metric returns into ``ds``."""
    produced = registration.obj(ds, **options)
    if isinstance(produced, xr.Dataset):
        produced = dict(produced.data_vars)
    if not isinstance(produced, Mapping) or not all(isinstance(v, xr.DataArray) for v in produced.values()):
        raise PluginError(f"metric {registration.name!r} (plugin {registration.plugin!r}) must return "
                          "a dict of xarray.DataArray or an xarray.Dataset")
    return ds.assign(produced)


def _check_metric_options(registration: Registration, options: Mapping[str, Any]) -> None:
    """Fail before training, not after it, when a metric cannot take the user's options."""
    try:
        inspect.signature(registration.obj).bind(None, **options)
    except TypeError as exc:
        raise UsageError(f"metric {registration.name!r} does not take options {json.dumps(options)} "
                         f"({exc})") from None
    check = registration.metadata.get("check_options")
    if check is not None:
        check(**options)


def _known_options(options: Mapping[str, Any]) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(AnalysisConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
    return dict(options)
