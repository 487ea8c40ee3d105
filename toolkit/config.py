"""The options of one analysis: their defaults, their validation, and their JSON record."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import textwrap
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

from toolkit.errors import PluginError, UsageError
from toolkit.hardware import BF16_MIN_PIXELS, BF16_MIN_SIDE
from toolkit.options import NO_FALLBACK, Option, check_int, closest, option, parse_bool, table

POSTER_INTERVALS = (0.25, 0.40, 0.60, 0.70, 0.80, 0.90, 1.00)
SCHEDULES = {
    "data": "stage t trains on a nested stratified subset holding fraction t of the training set, "
            "the authors' protocol",
    "epochs": "one run on the whole training set, checkpointed at fraction t of its steps",
}
DEVICES = ("auto", "cpu", "cuda", "cuda:<index>")
NONFINITE = {
    "stop": "NaN or Inf in training losses, synthesis losses or features stops the run, naming where",
    "record": "they are recorded in the results file and the run goes on",
}
PRECISIONS = {
    "auto": "bf16-synthesis where the device has bf16 matrix units, as AMX or AVX512-BF16 CPUs and "
            f"CUDA 8.0+ do, and the images have at least {BF16_MIN_PIXELS:,} pixels, {BF16_MIN_SIDE}x"
            f"{BF16_MIN_SIDE}: the one setting that met issue 19's bar on both CPUs measured, GPUs "
            "not yet; fp32 elsewhere; the file records which and why",
    "fp32": "float32 throughout",
    "bf16": "the model under bfloat16 autocast, on CPU and CUDA, for training and synthesis; loss, "
            "stopping test and images stay float32",
    "bf16-synthesis": "bf16 for synthesis only; see docs/performance.md",
}


def _choices(choices: Mapping[str, str]) -> str:
    """An option's help from its table of choices: "a (what a does) or b (what b does)."."""
    described = [f"{name} ({what})" for name, what in choices.items()]
    return f"{', '.join(described[:-1])} or {described[-1]}."

# save_images left at None saves the whole grid P for at most this many classes (n^2 images).
SAVE_IMAGES_UP_TO = 20
# The largest first seed: every seed, seed .. seed + seeds - 1, fits a signed 32-bit integer.
MAX_SEED = 2**31 - 1
MAX_BATCH = 2**20  # images (or training examples) in one batch


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """Everything that decides the numbers of one study. Defaults reproduce the poster.

    Each option is declared once, below, with its default, help text and limits
    (:func:`toolkit.options.option`); the command line, ``--help``, this docstring's attributes and
    the JSON record in the results file (:meth:`to_json`) all come from these declarations.
    """

    model: str = option("resnet18", "registered model (`toolkit plugins --all` lists them), e.g. "
                        "resnet18, resnet18-tv, timm:NAME.", metavar="NAME")
    dataset: str = option("digits", "registered dataset: digits (offline, bundled), cifar10, cifar100, "
                          "imagefolder (your images: --data_root a folder or .zip with train/<class>/ "
                          "and test/<class>/).", metavar="NAME")
    intervals: tuple[float, ...] = option(
        POSTER_INTERVALS, "training fractions to probe the model at, comma-separated, strictly "
        "increasing, in (0, 1].", metavar="T,T,...")
    schedule: str = option("data", _choices(SCHEDULES), metavar="NAME")
    seeds: int = option(5, "independent prototype initialisations per interval (the poster: 5).",
                        low=1, high=10_000)
    seed_start: int = option(0, "the first seed; the seeds are seed_start, seed_start+1, ... "
                             "(--seeds of them), and the last must be at most "
                             f"{MAX_SEED}. It also seeds training. Formerly --seed.",
                             low=0, high=MAX_SEED)
    epochs: int | None = option(None, "training epochs per interval (schedule data) or in all (schedule "
                                "epochs); default from the dataset, else 10.", low=1, high=10_000,
                                fallback=10)
    train_lr: float | None = option(None, "SGD (Nesterov) learning rate for training, cosine-annealed "
                                    "per stage; default from the dataset (digits 0.1), else 0.05.",
                                    fallback=0.05)
    train_batch_size: int | None = option(None, "training batch size; default from the dataset "
                                          "(digits 32), else 128.", low=1, high=MAX_BATCH,
                                          fallback=128)
    momentum: float = option(0.9, "SGD momentum for training, in [0, 1).")
    weight_decay: float = option(5e-4, "SGD weight decay for training, >= 0.")
    crop_padding: int | None = option(None, "training augmentation: random crop after this much zero "
                                      "padding; default from the dataset, else 0 (none).",
                                      low=0, high=1024, fallback=0)
    flip: bool | None = option(None, "training augmentation: random horizontal flips; default from "
                               "the dataset, else false.", fallback=False, metavar="")
    synthesizer: str = option("prototype", "registered synthesis strategy; prototype is the paper's.",
                              metavar="NAME")
    lr: float | None = option(None, "synthesis step length in pixel space (the L2 norm of one update "
                              "of one image); default from the dataset (cifar100 0.1, cifar10 0.01, "
                              "digits 0.1), else 0.1.", fallback=0.1)
    loss_threshold: float = option(0.01, "an image is done once its cross-entropy toward its target "
                                   "is below this.")
    max_steps: int | None = option(None, "most steps one image may take; default from the dataset "
                                   "(digits 100), else 1000.", low=1, high=1_000_000, fallback=1000)
    fixed_steps: int | None = option(None, "every image takes exactly this many steps and the "
                                     "threshold only decides whether it converged (the authors' "
                                     "code: 250).", low=1, high=1_000_000)
    batch_size: int | str | None = option(
        "auto", "images optimised at once during synthesis: a whole number, or auto to choose it "
        "from the device and image size (CPU: 128 at 32x32; GPU: 1024 at 32x32; "
        "toolkit.synthesis.auto_batch_size).", low=1, high=MAX_BATCH, metavar="N|auto")
    block_rows: int | str = option(
        "auto", "rows k of one seed's grid per piece of synthesis work (what one rank does at a "
        "time, and what the work directory saves): a whole number (at most that many rows), or "
        "auto: about four micro-batches of images, so grids of up to 4 x batch_size images stay "
        "whole.", low=1, high=1_000_000, metavar="N|auto")
    save_images: bool | None = option(
        None, "store the whole grid P of images in the results file (uint8); default: true for "
        f"datasets of up to {SAVE_IMAGES_UP_TO} classes. The class prototypes and their starting "
        "noise are stored always.", metavar="")
    metrics: tuple[str, ...] = option(("cosine", "zscore"), "registered metrics to run, in this "
                                      "order, comma-separated.", metavar="NAME,NAME,...")
    metric_options: Mapping[str, Mapping[str, Any]] = option(
        help="JSON of keyword options per metric, e.g. '{\"zscore\": {\"reference\": \"seed\"}}'.",
        default_factory=dict, metavar="JSON")
    save: tuple[str, ...] | None = option(
        None, "which of the metrics' n x n x n tensors (C, R) the results file keeps, "
        "comma-separated; default all; none keeps only their summaries (for large n: C and R take "
        "8 n^3 bytes per interval and seed). The features stay in the file, so the tensors can be "
        "computed again. With --metrics cosine_summaries the named tensors are streamed into the "
        "file block by block, never whole in memory.", metavar="NAME,NAME,...|none")
    data_root: str | None = option(None, "folder holding (or to receive) the dataset files; default "
                                   "$TOOLKIT_DATA, else ~/.cache/toolkit/data.", metavar="FOLDER")
    download: bool = option(True, "allow downloading a missing dataset (--nodownload to forbid).",
                            metavar="")
    device: str = option("auto", "auto (CUDA when available), cpu, cuda or cuda:N.", metavar="NAME")
    nonfinite: str = option("stop", _choices(NONFINITE), metavar="NAME")
    precision: str = option("auto", _choices(PRECISIONS), metavar="NAME")
    compile: bool | str = option(
        "auto", "run synthesis through torch.compile (--compile), not (--nocompile), or where it is "
        "estimated to save more time than compiling takes on this device (--compile auto; the "
        "file's compile_reason says why). Training runs eagerly: compiling it did not pay on the "
        "CPUs measured.", metavar="")

    def __post_init__(self) -> None:
        set_ = lambda field, value: object.__setattr__(self, field, value)  # noqa: E731 (frozen)
        set_("intervals", _floats("intervals", self.intervals))
        set_("metrics", _names("metrics", self.metrics))
        set_("metric_options", _metric_options(self.metric_options))
        if self.save is not None:
            set_("save", () if self.save in ("", "none") else _names("save", self.save))
        if self.batch_size is None:
            set_("batch_size", "auto")
        set_("download", parse_bool("download", self.download))
        set_("compile", "auto" if str(self.compile).strip().lower() == "auto" else
             parse_bool("compile", self.compile, choices="auto, true or false"))
        for name in ("flip", "save_images"):
            set_(name, parse_bool(name, getattr(self, name), optional=True))
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
        for name, allowed in (("nonfinite", NONFINITE), ("schedule", SCHEDULES),
                              ("precision", PRECISIONS)):
            _check_choice(name, getattr(self, name), allowed)
        for name in ("seeds", "seed_start", "epochs", "train_batch_size", "max_steps", "fixed_steps",
                     "crop_padding"):
            check_int(OPTION[name], getattr(self, name), optional=name not in ("seeds", "seed_start"))
        if self.seed_start + self.seeds - 1 > MAX_SEED:
            raise UsageError(f"--seed_start {self.seed_start} with --seeds {self.seeds}: the last seed "
                             f"{self.seed_start + self.seeds - 1} must be at most {MAX_SEED}")
        for name in ("batch_size", "block_rows"):
            value = getattr(self, name)
            if value != "auto" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise UsageError(f"--{name} must be auto or a whole number >= 1; got {value!r}")
            if value != "auto":
                check_int(OPTION[name], value)
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
    def seed(self) -> int:
        """Deprecated: the first seed is ``seed_start``."""
        warnings.warn(deprecation("seed"), FutureWarning, stacklevel=2)
        return self.seed_start

    @property
    def seed_values(self) -> list[int]:
        return list(range(self.seed_start, self.seed_start + self.seeds))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AnalysisConfig":
        """The configuration a results file records (under old option names too: ``RENAMED``)."""
        return cls(**renamed(json.loads(text), warn=False))


# Options renamed, old name -> new. The old name is still taken, with a warning (FutureWarning),
# and read silently in results files and work directories written before the rename.
RENAMED = {"seed": "seed_start"}  # "--seed 3" was too easily read as "3 seeds"


def renamed(options: Mapping[str, Any], *, warn: bool = True) -> dict[str, Any]:
    """``options`` with every old name of ``RENAMED`` replaced by its new one; giving both is a
    ``UsageError``."""
    out = dict(options)
    for old, new in RENAMED.items():
        if old not in out:
            continue
        if new in out:
            raise UsageError(f"--{old} and --{new} both given; --{old} is the old name of --{new}: "
                             f"give only --{new}")
        if warn:
            warnings.warn(deprecation(old), FutureWarning, stacklevel=3)
        out[new] = out.pop(old)
    return out


def deprecation(old: str) -> str:
    """What a user giving the old name ``old`` of ``RENAMED`` is told."""
    new = RENAMED[old]
    return f"--{old} is deprecated, use --{new} ({OPTION[new].help.split('; ')[0]}" + (
        "; the number of seeds is --seeds)" if new == "seed_start" else ")")


def _taking_old_names(init):
    """``AnalysisConfig(seed=3)`` as before the rename, with the warning (``RENAMED``)."""
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **renamed(kwargs))
    return __init__


AnalysisConfig.__init__ = _taking_old_names(AnalysisConfig.__init__)
OPTIONS = table(AnalysisConfig)
OPTION = {opt.name: opt for opt in OPTIONS}
# Options a dataset plugin may give defaults for (its ``defaults`` metadata). Left at None by the
# user, they take the dataset's default, else their declared fallback, collected here.
FALLBACKS = {opt.name: opt.fallback for opt in OPTIONS if opt.fallback is not NO_FALLBACK}
DATASET_DEFAULTABLE = tuple(FALLBACKS)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How one run of ``analyze`` is carried out, not what it computes: not part of the
    configuration, so not recorded in the results file nor hashed into its default name. Declared
    like :class:`AnalysisConfig` (the command line takes both); the Python API takes them as the
    keyword arguments of :func:`toolkit.analyze`."""

    out: str | None = option(
        None, "results file (.nc); its folder is created if missing. Default "
        "results/MODEL-DATASET-HASH.nc, HASH of the options, so the same command writes the same "
        "file. Work in progress goes beside it, in OUT-without-.nc + \".work/\": the training "
        "checkpoints (interval-<t>.pt, kept), and each finished seed's class prototypes and block "
        "of grid rows (dropped once the results file is written). Rerunning an interrupted "
        "command resumes from there.", config=False, metavar="FILE.nc")
    overwrite: bool = option(False, "replace an existing results file (and its figures).",
                             config=False, metavar="")
    fresh: bool = option(False, "discard the work an earlier run of this --out left, and start over.",
                         config=False, metavar="")
    checkpoints: str | None = option(
        None, "folder of model weights to analyse instead of training, one file per interval named "
        "interval-<t>.pt (e.g. interval-0.25.pt): a state_dict, or a finished run's OUT.work "
        "folder. Loaded as weights only; files carrying pickled objects are refused.",
        config=False, metavar="FOLDER")
    progress: bool = option(True, "show progress bars on stderr (--noprogress to hide).",
                            config=False, metavar="")
    plots: bool = option(True, "draw the figures into OUT-without-.nc + \".figures/\" (--noplots to "
                         "skip).", config=False, metavar="")

    def __post_init__(self) -> None:
        for name in ("overwrite", "fresh", "progress", "plots"):
            object.__setattr__(self, name, parse_bool(name, getattr(self, name)))
        for name in ("out", "checkpoints"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise UsageError(f"--{name} must be a path; got {value!r}")
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))


RUN_OPTIONS = table(RunOptions)


def _attributes(options: Iterable[Option]) -> str:
    lines = []
    for opt in options:
        limits = opt.limits()
        text = f"{opt.name}: {opt.help}" + (f" Whole number, {limits}." if limits else "")
        lines += textwrap.wrap(text, 96, initial_indent="    ", subsequent_indent="        ")
    return "\n".join(lines)


AnalysisConfig.__doc__ += "\n    Attributes:\n" + _attributes(OPTIONS) + "\n"
RunOptions.__doc__ += "\n\n    Attributes:\n" + _attributes(RUN_OPTIONS) + "\n"


def _check_choice(name: str, value: Any, allowed: Iterable[str]) -> None:
    """Refuse a value of ``--name`` outside ``allowed``, naming the nearest allowed one."""
    if not isinstance(value, str) or value not in allowed:
        near = closest(value.lower(), allowed) if isinstance(value, str) else None
        raise UsageError(f"unknown --{name} {value!r}; allowed: {', '.join(allowed)}"
                         + (f"; did you mean {near!r}?" if near else ""))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
