"""The run's work directory: every finished unit of work is on disk the moment it is done.

A study takes hours; a crash, a full disk or Ctrl-C must not cost what was already computed.
Rerunning the same command finds the work directory (``<results>.work/`` beside the results file),
checks that it belongs to the same run, skips what is finished and writes a results file whose data
equal an uninterrupted run's.
Every run has one: a run without a results file or a named work directory gets a temporary one,
removed at its end (:func:`toolkit.stages.preflight.work_directory`), so every stage saves and finds
its work the same way.

Layout::

    run.json                   the run's identity: configuration, data fingerprint, toolkit version
    lock                       held by the run working here (its process id); gone at its end
    interval-<t>.pt            training state after interval t (``{"model": state_dict, "optimizer",
                               "generator", "stage_index", "step", "order", "stage", "spent"}``)
    protos-<t>-seed-<s>.npz    one (interval, seed)'s class prototypes: float32 images, records
    unit-<t>-seed-<s>-rows-<a>-<b>.npz
                               rows a <= k < b of one (interval, seed) grid: features, per-image
                               records, probes' arrays (a block, :func:`toolkit.distributed.blocks`)

Each file also says what making it cost (``spent``: the seconds of training, or the image steps and
seconds of synthesis, features and probes), so a resumed run's ``image_steps`` and ``time_*_s``
count the finished work it reuses as an uninterrupted run counts it.

``<t>`` is the fraction as Python's ``f"{t:g}"`` writes it (``interval-0.25.pt``, ``interval-1.pt``);
``analyze --checkpoints DIR`` reads the same names, so a finished run's work directory, or a folder
of the user's own ``state_dict`` files, can be analysed again without training.

Every file is written under a temporary name in the same folder and renamed into place, so a crash
leaves the old file or the new one, never a torn one. Nothing is unpickled: checkpoints load with
``torch.load(weights_only=True)``, units with ``numpy.load(allow_pickle=False)``.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from toolkit import locking
from toolkit.config import renamed
from toolkit.errors import UsageError
from toolkit.files import atomic_write

IDENTITY_FILE = "run.json"
SPENT = "_spent_"  # prefix of the arrays of a unit's file that say what making it cost
_KEPT = "the work finished before it is kept: free the space and rerun the same command"

# Options that change numbers only at the rounding level, as the CPU's kind and the threads do.
ROUNDING_ONLY = ("compile",)
# Options that do not change a single number of the finished work, or only ROUNDING_ONLY: a run
# may resume with others (``save`` only filters which tensors the file keeps; metrics read only the
# finished work, so the run's identity names the probes its metrics need instead of the metrics).
NOT_IN_IDENTITY = ("data_root", "download", "nonfinite", "save", "metrics", "metric_options",
                   *ROUNDING_ONLY)


def checkpoint_name(fraction: float) -> str:
    """The file name of the checkpoint of interval ``fraction``: ``interval-0.25.pt``."""
    return f"interval-{fraction:g}.pt"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint without running any code it may carry; ``UsageError`` names the problem.

    Only tensors, numbers, strings and containers of them are accepted (``weights_only=True``); a
    file that needs anything else (a pickled object, whose loading could execute code) is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint at {str(path)!r}")
    try:
        with warnings.catch_warnings():  # a plain pickle: refused below, in one line of our own
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        needs = re.search(r"GLOBAL (\S+)", str(exc))
        if needs is None:  # not a pickle torch.save wrote: garbage, a truncated file, a plain pickle
            # torch's first line advises weights_only=False, which is what this refuses to do
            detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
            reason = detail.group(1).strip() if detail else lines[0] if lines else "unpickling failed"
            raise UsageError(f"checkpoint {path} is not a readable PyTorch file ({reason}); a "
                             "checkpoint is what torch.save(model.state_dict(), path) writes") from None
        raise UsageError(f"checkpoint {path} holds Python objects, not just weights (it needs "
                         f"{needs.group(1)}); "
                         "refusing to load it, since that could run code; save a state_dict "
                         "(torch.save(model.state_dict(), path))") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        reason = str(exc).split("\n")[0].strip() or type(exc).__name__
        raise UsageError(f"checkpoint {path} is not a readable PyTorch file ({reason})") from None
    if not isinstance(state, dict):
        raise UsageError(f"checkpoint {path} holds a {type(state).__name__}, not a state_dict")
    return state


def model_weights(state: Mapping[str, Any], path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model's ``state_dict`` in a checkpoint: a training state's ``"model"`` entry, or the
    whole file when it is a plain ``state_dict``."""
    weights = state.get("model", state)
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise UsageError(f"checkpoint {path} is not a state_dict (a mapping of names to tensors)")
    return dict(weights)


def data_fingerprint(data) -> str:
    """A short hash of a dataset's images, labels and class names."""
    digest = hashlib.blake2b(digest_size=12)
    for tensor in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    digest.update(json.dumps(list(data.class_names)).encode())
    return digest.hexdigest()


def run_identity(config_json: str, data, toolkit_version: str) -> dict[str, Any]:
    """What must match for finished units to belong to a run: every option that changes a number,
    the data and the toolkit version."""
    config = {k: v for k, v in json.loads(config_json).items() if k not in NOT_IN_IDENTITY}
    return {"config": config, "data": data_fingerprint(data), "toolkit_version": toolkit_version}


class WorkDir:
    """The work directory of one run (see the module's docstring for its layout)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._unwritten_identity: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"WorkDir({str(self.path)!r})"

    def ours(self) -> list[Path]:
        """The files here that a run wrote (anything else in the folder is left alone)."""
        if not self.path.is_dir():
            return []
        patterns = (IDENTITY_FILE, "interval-*.pt", "unit-*.npz", "protos-*.npz", ".*.tmp")
        return sorted({p for pattern in patterns for p in self.path.glob(pattern)})

    def check(self) -> None:
        """Refuse a path that cannot be a work directory (before any work is done)."""
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"work directory {str(self.path)!r} is a file; move it or choose another --out")

    def check_free(self) -> None:
        """Refuse at once a directory another live run holds (:func:`toolkit.locking.check_free`)."""
        locking.check_free(self.path)

    def locked(self):
        """Hold the directory for this process (:func:`toolkit.locking.locked`)."""
        return locking.locked(self.path)

    def claim(self, identity: Mapping[str, Any], fresh: bool = False) -> int:
        """Make this the work directory of the run ``identity``; return how many files it resumes.

        ``fresh`` discards what an earlier run left. Otherwise the directory must be empty or hold
        the same run; units of another run are never mixed in. The folder and its identity file
        are written with the first unit, so a run that fails before finishing any leaves nothing.
        """
        self.check()
        if fresh:
            self.clear()
        identity = json.loads(json.dumps(identity))
        marker = self.path / IDENTITY_FILE
        if marker.is_file():
            try:
                recorded = json.loads(marker.read_text())
                recorded["config"] = {k: v for k, v in renamed(recorded["config"], warn=False).items()
                                      if k not in NOT_IN_IDENTITY}  # older names; options since left out
            except (OSError, ValueError, KeyError, TypeError, AttributeError, UsageError):
                recorded = {}
            differences = _differences(recorded, identity)
            if [d.split(":")[0] for d in differences] == ["data"]:
                raise UsageError(f"{self.path} was made by a run whose dataset plugin gave different "
                                 "data (its images, labels or class names differ); a dataset loader "
                                 "must return the same data on every call (see the register_datasets "
                                 "hook); make it deterministic, or rerun with --fresh to start over")
            # the precision may differ with nothing changed: the old default (fp32), or what auto
            # picked on other hardware
            there = recorded.get("config", {}).get("precision")
            if [d.split(":")[0] for d in differences] == ["precision"] and isinstance(there, str):
                raise UsageError(f"{self.path} holds work of the same run at --precision {there} "
                                 f"({differences[0]}); rerun with --precision {there} (and --out "
                                 f"{self.path.with_suffix('.nc')} if you gave none) to resume it, "
                                 "or with --fresh to discard it")
            if differences:
                raise UsageError(f"{self.path} holds work of a different run ({'; '.join(differences[:3])}"
                                 f"{'; ...' if len(differences) > 3 else ''}); rerun with --fresh to "
                                 "discard it, or choose another --out")
            for torn in self.path.glob(".*.tmp"):  # a write that a crash cut short
                torn.unlink()
            return len(self.ours()) - 1
        if any(p.name != IDENTITY_FILE for p in self.ours()):
            raise UsageError(f"{self.path} holds checkpoints or units but no {IDENTITY_FILE}, so they "
                             "cannot be matched to this run; rerun with --fresh to discard them")
        self._unwritten_identity = identity
        return 0

    def _ready(self) -> None:
        if self._unwritten_identity is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self._unwritten_identity, indent=1, sort_keys=True)
            atomic_write(self.path / IDENTITY_FILE, lambda tmp: tmp.write_text(text), hint=_KEPT)
            self._unwritten_identity = None

    def clear(self) -> None:
        """Delete what runs wrote here; the folder itself goes if nothing else is in it."""
        for path in self.ours():
            path.unlink()
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    # training states, one per interval
    def checkpoint(self, fraction: float) -> Path:
        return self.path / checkpoint_name(fraction)

    def load_training(self, fraction: float) -> dict[str, Any] | None:
        path = self.checkpoint(fraction)
        return load_checkpoint(path) if path.is_file() else None

    def save_training(self, fraction: float, state: Mapping[str, Any]) -> None:
        self._ready()

        def write(tmp: Path) -> None:
            try:
                torch.save(dict(state), tmp)
            except RuntimeError as exc:  # PyTorch's C++ writer: "basic_ios::clear", "failed writing"
                raise write_failure(exc, tmp.parent) from exc
        atomic_write(self.checkpoint(fraction), write, hint=_KEPT)

    # blocks of rows of (interval, seed) grids, and the class prototypes they start from
    def unit(self, fraction: float, seed: int, rows: range) -> Path:
        return self.path / f"unit-{fraction:g}-seed-{seed}-rows-{rows.start}-{rows.stop}.npz"

    def prototypes(self, fraction: float, seed: int) -> Path:
        return self.path / f"protos-{fraction:g}-seed-{seed}.npz"

    def load_unit(self, fraction: float, seed: int, rows: range) -> dict[str, np.ndarray] | None:
        return self._load(self.unit(fraction, seed, rows))

    def save_unit(self, fraction: float, seed: int, rows: range,
                  arrays: Mapping[str, np.ndarray], spent: Mapping[str, float] | None = None) -> None:
        """Save a unit, with what making it cost (``spent``: ``image_steps`` and seconds by
        stage), which a resumed run adds to its own (:meth:`spent`)."""
        self._save(self.unit(fraction, seed, rows), arrays, spent)

    def load_prototypes(self, fraction: float, seed: int) -> dict[str, np.ndarray] | None:
        return self._load(self.prototypes(fraction, seed))

    def save_prototypes(self, fraction: float, seed: int, arrays: Mapping[str, np.ndarray],
                        spent: Mapping[str, float] | None = None) -> None:
        self._save(self.prototypes(fraction, seed), arrays, spent)

    def spent(self, path: Path) -> dict[str, float]:
        """What making a saved unit or prototypes file cost (``{}`` for a file saved without it)."""
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return {name[len(SPENT):]: float(arrays[name]) for name in arrays.files
                        if name.startswith(SPENT)}
        except (OSError, ValueError, zipfile.BadZipFile):
            return {}

    def _load(self, path: Path) -> dict[str, np.ndarray] | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return {name: arrays[name] for name in arrays.files if not name.startswith(SPENT)}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise UsageError(f"{path} is unreadable ({exc}); rerun with --fresh") from None

    def _save(self, path: Path, arrays: Mapping[str, np.ndarray],
              spent: Mapping[str, float] | None = None) -> None:
        self._ready()
        arrays = {**arrays, **{SPENT + name: np.float64(value) for name, value in (spent or {}).items()}}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
        atomic_write(path, write, hint=_KEPT)

    def discard_units(self) -> None:
        """Drop the units and prototypes once the results file holds their data; checkpoints and
        identity stay."""
        for path in [*self.path.glob("unit-*.npz"), *self.path.glob("protos-*.npz")]:
            path.unlink()
        if not any(self.path.glob("interval-*.pt")):
            self.clear()


# Below this many free bytes a failed write is taken for a full disk.
FULL_DISK_BYTES = 64 << 20


def write_failure(exc: BaseException, folder: str | os.PathLike) -> OSError:
    """An ``OSError`` for a write that a library reported as a ``RuntimeError`` without an errno
    (PyTorch's ``basic_ios::clear`` or ``PytorchStreamWriter failed writing file``, netCDF's
    ``NetCDF: HDF error``): ``ENOSPC`` when ``folder``'s filesystem is (nearly) full, else the
    library's first line."""
    try:
        full = shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return OSError(errno.EIO, f"write failed: {first}")


def _differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(recorded) | set(wanted)):
        there, here = recorded.get(key, "(absent)"), wanted.get(key, "(absent)")
        if isinstance(there, Mapping) and isinstance(here, Mapping):
            out += _differences(there, here, f"{prefix}{key}.")
        elif there != here:
            name = f"{prefix}{key}".removeprefix("config.")
            out.append(f"{name}: {json.dumps(there)} there, {json.dumps(here)} here")
    return out
