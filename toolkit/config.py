"""The options of one analysis: their defaults, their validation, and their JSON record."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from toolkit.errors import PluginError, UsageError

POSTER_INTERVALS = (0.25, 0.40, 0.60, 0.70, 0.80, 0.90, 1.00)
SCHEDULES = {
    "data": "stage t trains on a nested stratified subset holding fraction t of the training set",
    "epochs": "one run on the whole training set, checkpointed at fraction t of its steps",
}
DEVICES = ("auto", "cpu", "cuda", "cuda:<index>")
NONFINITE = {
    "stop": "NaN or Inf in training losses, synthesis losses or features stops the run",
    "record": "they are recorded in the results file and the run goes on",
}
PRECISIONS = {
    "fp32": "float32 throughout",
    "bf16": "the model under bfloat16 autocast (CPU and CUDA); loss, stopping test and images float32",
}

# Options a dataset plugin may give defaults for (its ``defaults`` metadata). Left at None by the
# user, they take the dataset's default, else the fallback here.
FALLBACKS = {"lr": 0.1, "epochs": 10, "crop_padding": 0, "flip": False, "train_lr": 0.05,
             "train_batch_size": 128, "max_steps": 1000}
DATASET_DEFAULTABLE = tuple(FALLBACKS)
# save_images left at None saves the whole grid P for at most this many classes (n^2 images).
SAVE_IMAGES_UP_TO = 20


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """Everything that decides the numbers of one study. Defaults reproduce the poster.

    Attributes:
        model: registered model name (``toolkit plugins`` lists them).
        dataset: registered dataset name.
        intervals: training fractions at which the model is probed, increasing, in (0, 1].
        schedule: ``data`` (growing data subsets, the authors' protocol) or ``epochs``.
        seeds: how many independent prototype initialisations per interval.
        seed: the first seed; seeds are ``seed, seed + 1, ...``. It also seeds training.
        epochs: training epochs per interval (schedule ``data``) or in all (schedule ``epochs``);
            default from the dataset.
        train_lr, train_batch_size, momentum, weight_decay: SGD (Nesterov) with a cosine learning
            rate per stage; learning rate and batch size default from the dataset.
        crop_padding, flip: training augmentation (random crop after zero padding, horizontal
            flip); defaults from the dataset.
        synthesizer: registered synthesizer name.
        lr: synthesis step length; default from the dataset (CIFAR-100 0.1, CIFAR-10 0.01).
        loss_threshold: an image is done once its cross-entropy is below this.
        max_steps: most steps one image may take; default from the dataset.
        fixed_steps: every image takes exactly this many steps (the authors' code: 250).
        batch_size: images optimised at once during synthesis: a whole number, or ``auto``
            (or None) to choose it from the device (``toolkit.synthesis.auto_batch_size``).
        block_rows: rows ``k`` of one seed's grid per piece of synthesis work (a block, one work
            queue, the unit of work of a rank and of the work directory): a whole number (at
            most that many rows), or ``auto``: about four micro-batches of images, so grids of
            up to ``4 * batch_size`` images stay whole (``toolkit.distributed.blocks``).
        precision: ``fp32`` or ``bf16`` (autocast) for synthesis and training; see ``PRECISIONS``.
        compile: run the model through ``torch.compile`` during synthesis.
        save_images: store the whole grid ``P`` of images in the results file (uint8); None saves
            it when the dataset has at most ``SAVE_IMAGES_UP_TO`` classes. The class prototypes
            and their starting noise are stored always.
        metrics: registered metric names, run in this order.
        save: which of the metrics' n x n x n tensors (dims interval, seed, k, j, i: ``C``, ``R``)
            the results file keeps; None keeps them all, an empty tuple (``none``) only their
            summaries. The features stay in the file, so the tensors can be computed again.
            With ``cosine_summaries`` (no ``cosine``), the named tensors are streamed into the
            file block by block, never whole in memory (:class:`toolkit.results.Streamed`).
        metric_options: keyword options per metric, e.g. ``{"zscore": {"reference": "seed"}}``.
        data_root: folder holding (or to receive) the dataset files.
        download: whether a missing dataset may be downloaded.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        nonfinite: ``stop`` (default) or ``record``: what NaN or Inf in a run does.
    """

    model: str = "resnet18"
    dataset: str = "digits"
    intervals: tuple[float, ...] = POSTER_INTERVALS
    schedule: str = "data"
    seeds: int = 5
    seed: int = 0
    epochs: int | None = None
    train_lr: float | None = None
    train_batch_size: int | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    crop_padding: int | None = None
    flip: bool | None = None
    synthesizer: str = "prototype"
    lr: float | None = None
    loss_threshold: float = 0.01
    max_steps: int | None = None
    fixed_steps: int | None = None
    batch_size: int | str | None = "auto"
    block_rows: int | str = "auto"
    save_images: bool | None = None
    metrics: tuple[str, ...] = ("cosine", "zscore")
    metric_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    save: tuple[str, ...] | None = None
    data_root: str | None = None
    download: bool = True
    device: str = "auto"
    nonfinite: str = "stop"
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self) -> None:
        set_ = lambda field, value: object.__setattr__(self, field, value)  # noqa: E731 (frozen)
        set_("intervals", _floats("intervals", self.intervals))
        set_("metrics", _names("metrics", self.metrics))
        set_("metric_options", _metric_options(self.metric_options))
        if self.save is not None:
            set_("save", () if self.save in ("", "none") else _names("save", self.save))
        if self.batch_size is None:
            set_("batch_size", "auto")
        for name in ("model", "dataset", "synthesizer", "schedule", "device", "nonfinite"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise UsageError(f"--{name} must be a name; got {getattr(self, name)!r}")
        if self.data_root is not None:
            set_("data_root", str(Path(self.data_root).expanduser()))
        self._validate()

    def _validate(self) -> None:
        iv = self.intervals
        if not iv:
            raise UsageError("--intervals is empty; give training fractions in (0, 1], e.g. 0.5,1.0")
        if any(not (0.0 < t <= 1.0) for t in iv):
            raise UsageError(f"--intervals must lie in (0, 1]; got {', '.join(f'{t:g}' for t in iv)}")
        if any(b <= a for a, b in zip(iv, iv[1:])):
            raise UsageError("--intervals must be strictly increasing without duplicates; got "
                             + ", ".join(f"{t:g}" for t in iv))
        if self.nonfinite not in NONFINITE:
            raise UsageError(f"unknown --nonfinite {self.nonfinite!r}; allowed: {', '.join(NONFINITE)}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown --schedule {self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        _check_int("seeds", self.seeds, 1)
        _check_int("seed", self.seed, 0)
        _check_int("epochs", self.epochs, 1, optional=True)
        _check_int("train_batch_size", self.train_batch_size, 1, optional=True)
        _check_int("max_steps", self.max_steps, 1, optional=True)
        _check_int("fixed_steps", self.fixed_steps, 1, optional=True)
        for name in ("batch_size", "block_rows"):
            value = getattr(self, name)
            if value != "auto" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise UsageError(f"--{name} must be auto or a whole number >= 1; got {value!r}")
        if not isinstance(self.precision, str) or self.precision not in PRECISIONS:
            raise UsageError(f"unknown --precision {self.precision!r}; allowed: {', '.join(PRECISIONS)}")
        _check_int("crop_padding", self.crop_padding, 0, optional=True)
        for name in ("train_lr", "lr", "loss_threshold"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and math.isfinite(value) and value > 0):
                raise UsageError(f"--{name} must be a positive number; got {value!r}")
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if not (_is_number(value) and 0 <= value < math.inf):
                raise UsageError(f"--{name} must be a number >= 0; got {value!r}")
        if self.momentum >= 1:
            raise UsageError(f"--momentum must be below 1; got {self.momentum!r}")
        for name in ("download", "compile") + (("flip",) if self.flip is not None else ()):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"--{name} must be true or false; got {getattr(self, name)!r}")
        if self.save_images is not None and not isinstance(self.save_images, bool):
            raise UsageError(f"--save_images must be true or false; got {self.save_images!r}")
        if not (self.device in ("auto", "cpu", "cuda") or
                (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise UsageError(f"unknown --device {self.device!r}; allowed: {', '.join(DEVICES)}")
        if not self.metrics:
            raise UsageError("--metrics is empty; name at least one metric, e.g. cosine,zscore")
        unknown = set(self.metric_options) - set(self.metrics)
        if unknown:
            raise UsageError(f"--metric_options names metrics not in --metrics: "
                             f"{', '.join(sorted(unknown))}; metrics: {', '.join(self.metrics)}")

    def with_dataset_defaults(self, defaults: Mapping[str, Any]) -> "AnalysisConfig":
        """Fill the options left at None from the dataset's defaults, then from ``FALLBACKS``."""
        unknown = sorted(set(defaults) - set(DATASET_DEFAULTABLE))
        if unknown:
            raise PluginError(f"dataset {self.dataset!r} gives defaults for {', '.join(unknown)}; "
                              f"datasets may set: {', '.join(DATASET_DEFAULTABLE)}")
        filled = {name: defaults.get(name, FALLBACKS[name])
                  for name in DATASET_DEFAULTABLE if getattr(self, name) is None}
        return dataclasses.replace(self, **filled)

    def with_save_images_for(self, num_classes: int) -> "AnalysisConfig":
        """Resolve ``save_images`` left at None for a dataset of ``num_classes`` classes."""
        if self.save_images is not None:
            return self
        return dataclasses.replace(self, save_images=num_classes <= SAVE_IMAGES_UP_TO)

    @property
    def seed_values(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AnalysisConfig":
        return cls(**json.loads(text))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UsageError(f"--{name} must be a whole number >= {minimum}; got {value!r}")


def _split(value: Any) -> list:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, Iterable):
        return list(value)
    return [value]


def _floats(name: str, value: Any) -> tuple[float, ...]:
    out = []
    for item in _split(value):
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise UsageError(f"--{name} must be numbers separated by commas; got {item!r}") from None
        if isinstance(item, bool) or not math.isfinite(number):
            raise UsageError(f"--{name} must be finite numbers; got {item!r}")
        out.append(number)
    return tuple(out)


def _names(name: str, value: Any) -> tuple[str, ...]:
    names = tuple(str(item) for item in _split(value))
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"--{name} lists {', '.join(duplicates)} more than once")
    return names


def _metric_options(value: Any) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise UsageError('--metric_options must be JSON like {"zscore": {"reference": "seed"}}; '
                             f"got {value!r}") from None
    if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
        raise UsageError('--metric_options must map metric names to option dicts, like '
                         '{"zscore": {"reference": "seed"}}')
    return {str(k): dict(v) for k, v in value.items()}
