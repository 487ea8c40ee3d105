"""Rank classifiers without data: the library side of ``toolkit rank``.

Each model's weights are probed exactly as ``analyze --checkpoints`` probes them, at the one
interval 1.0, each model in a folder of its own inside the ranking's work directory, so a killed
ranking resumes where it stopped (finished models are reused, an unfinished one resumes from its
own work directory). Every data-free score registered through ``register_scores`` is computed for
every model; the models are ranked by the chosen one. Where the dataset's test split is present,
each score's Kendall tau-b and Spearman rho with test accuracy are given, each with a 95 %
percentile bootstrap interval over models; test accuracy is never used to compute a score.

The results file has the dimension ``model`` before the dimensions of an ``analyze`` file
(coordinate ``model``: a name per model, with the non-dimension coordinates ``model_name`` (the
registered architecture), ``weights`` (the file's path) and ``sha256``), the variables ``scores``
``(model, score)`` (coordinate ``score``: the names), ``score_expected`` ``(score)``,
``test_accuracy`` ``(model)``, and ``model_config`` and ``model_attrs`` ``(model)`` (JSON: each
model's configuration, and the rest of its own file's attributes). Models of different feature
widths share the ``feature`` dimension, padded with NaN.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from toolkit.data import reusing_datasets
from toolkit.errors import UsageError
from toolkit.plugins import get_registry
from toolkit.results import check_writable, provenance, write_results
from toolkit.workdir import ROUNDING_ONLY

WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")
DEFAULT_SCORE = "C_minus_R_converged"  # the pre-registered primary score (examples/zoo-digits)
BOOTSTRAP = 2000
RANK_FORMAT = 1  # version of the ranking file's layout (attribute toolkit_rank_version)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One classifier to rank: its label, registered architecture and weight file."""

    name: str
    model: str
    path: Path
    sha256: str


def parse_entries(specs: Sequence[str | os.PathLike], model: str | None = None) -> list[Entry]:
    """``MODEL=PATH`` (or ``PATH``, with ``model`` as its architecture) -> :class:`Entry`, labelled
    by the file's name without suffix (made unique by a number where two share it)."""
    if not specs:
        raise UsageError("rank needs weight files: toolkit rank MODEL=PATH [MODEL=PATH ...] "
                         "(or PATH ... --model MODEL)")
    entries, seen = [], {}
    for spec in map(str, specs):
        name, _, path = spec.rpartition("=") if "=" in spec else (model, "", spec)
        if not name:
            raise UsageError(f"{spec!r} names no model: write MODEL=PATH (e.g. resnet18={spec}) "
                             "or pass --model MODEL for every bare path")
        file = Path(path).expanduser()
        if file.suffix.lower() not in WEIGHT_SUFFIXES:
            raise UsageError(f"{path!r} is not a weight file; rank reads "
                             f"{', '.join(WEIGHT_SUFFIXES)} state dicts")
        if not file.is_file():
            raise UsageError(f"no weight file at {path!r}")
        get_registry("model").get(name)  # an unknown architecture fails here, before any work
        label = file.stem
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}-{seen[label]}"
        entries.append(Entry(label, name, file.resolve(), _sha256(file)))
    return entries


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_weights(entry: Entry, folder: Path) -> Path:
    """A checkpoints folder for ``analyze`` holding ``entry``'s weights as ``interval-1.pt``: a
    link to a ``.pt`` file, a ``state_dict`` saved from a ``.safetensors`` one (read with the
    ``safetensors`` package, which runs no code)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "interval-1.pt"
    if target.exists() or target.is_symlink():
        target.unlink()
    if entry.path.suffix.lower() != ".safetensors":
        os.symlink(entry.path, target)
        return folder
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(entry.path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"{entry.path} is not a readable safetensors file ({exc})") from None
    tmp = folder / ".interval-1.pt.tmp"
    torch.save(weights, tmp)
    os.replace(tmp, target)
    return folder


@dataclasses.dataclass(frozen=True)
class Correlation:
    """One score against test accuracy over the ranked models."""

    score: str
    models: int
    kendall: float
    kendall_ci: tuple[float, float]
    spearman: float
    spearman_ci: tuple[float, float]
    expected: int


@dataclasses.dataclass(frozen=True)
class RankReport:
    """The ranking: the Dataset written to the file, the score it ranks by, and the correlations
    (empty without test accuracy)."""

    ds: xr.Dataset
    by: str
    correlations: tuple[Correlation, ...]

    @property
    def has_accuracy(self) -> bool:
        return bool(np.isfinite(self.ds["test_accuracy"].values).any())

    def order(self) -> list[str]:
        """Model names, best first by ``by`` in its expected direction (higher when none)."""
        values = self.ds["scores"].sel(score=self.by).values
        sign = -1.0 if int(self.ds["score_expected"].sel(score=self.by)) < 0 else 1.0
        keys = np.where(np.isfinite(values), -sign * values, np.inf)  # no value: ranked last
        return [str(self.ds["model"].values[i]) for i in np.argsort(keys, kind="stable")]


def bootstrap_interval(statistic, x: np.ndarray, y: np.ndarray, resamples: int = BOOTSTRAP,
                       seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of ``statistic(x, y)`` over resamples of the pairs (NaN draws,
    such as a resample with one distinct value, are left out)."""
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(x[idx], y[idx]) for idx in
                      rng.integers(0, len(x), (resamples, len(x)))], dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if len(draws) < resamples // 2:
        return (float("nan"), float("nan"))
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def correlations(ds: xr.Dataset, resamples: int = BOOTSTRAP) -> tuple[Correlation, ...]:
    """Each score's Kendall tau-b and Spearman rho with ``test_accuracy`` over the models that
    have both, with bootstrap intervals; none where fewer than 3 models do."""
    from scipy import stats

    def kendall(a, b):
        return stats.kendalltau(a, b).statistic

    def spearman(a, b):
        return stats.spearmanr(a, b).statistic

    accuracy = ds["test_accuracy"].values.astype(np.float64)
    out = []
    for score in ds["score"].values:
        values = ds["scores"].sel(score=score).values.astype(np.float64)
        ok = np.isfinite(values) & np.isfinite(accuracy)
        if ok.sum() < 3:
            continue
        x, y = values[ok], accuracy[ok]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)  # a draw of one value: NaN
            out.append(Correlation(
                str(score), int(ok.sum()), float(kendall(x, y)),
                bootstrap_interval(kendall, x, y, resamples), float(spearman(x, y)),
                bootstrap_interval(spearman, x, y, resamples),
                int(ds["score_expected"].sel(score=score))))
    return tuple(out)


def score_values(ds: xr.Dataset) -> dict[str, tuple[float, int]]:
    """Every registered score's value at the last interval of one model's results, and its
    expected sign; NaN where the file lacks what the score needs."""
    values = {}
    for registration in get_registry("score"):
        score = registration.obj
        value = float("nan")
        if all(name in ds.variables for name in score.needs):
            with np.errstate(all="ignore"):
                value = float(np.asarray(score.compute(ds), dtype=np.float64)[-1])
        values[registration.name] = (value, score.expected)
    return values


def combine(entries: Sequence[Entry], results: Sequence[xr.Dataset], dataset: str,
            by: str, options: Mapping[str, Any]) -> xr.Dataset:
    """One Dataset with a ``model`` dimension from each model's results (see the module)."""
    scores = [score_values(ds) for ds in results]
    names = sorted(scores[0])
    configs = [ds.attrs.get("config", "") for ds in results]
    # the rest of each model's attributes: versions, device, timings, precision and compile with why
    own = [json.dumps({k: v.item() if isinstance(v, np.generic) else v
                       for k, v in ds.attrs.items() if k != "config"}, sort_keys=True, default=str)
           for ds in results]
    parts = [ds.copy() for ds in results]
    for part in parts:
        part.attrs = {}  # each model's go to model_config and model_attrs; the file gets its own
    combined = xr.concat(parts, dim="model", join="outer", data_vars="all", coords="minimal",
                         compat="override", combine_attrs="drop")
    combined = combined.assign_coords(
        model=("model", [e.name for e in entries], {"long_name": "label of each ranked model"}),
        model_name=("model", [e.model for e in entries], {"long_name": "registered architecture"}),
        weights=("model", [str(e.path) for e in entries], {"long_name": "weight file"}),
        sha256=("model", [e.sha256 for e in entries], {"long_name": "SHA-256 of the weight file"}),
        score=("score", names, {"long_name": "data-free score (register_scores)"}))
    combined["scores"] = (("model", "score"), np.array([[s[n][0] for n in names] for s in scores]),
                          {"long_name": "each score at the last interval"})
    combined["score_expected"] = (("score",), np.array([scores[0][n][1] for n in names]),
                                  {"long_name": "sign expected of the score's correlation with "
                                                "test accuracy (0: none claimed)"})
    combined["model_config"] = (("model",), np.array(configs, dtype=object),
                                {"long_name": "each model's analysis configuration (JSON)"})
    combined["model_attrs"] = (("model",), np.array(own, dtype=object),
                               {"long_name": "each model's own results attributes but config (JSON)"})
    combined["test_accuracy"] = combined["test_accuracy"].isel(interval=-1)
    combined.attrs.update(provenance(json.dumps(dict(options), sort_keys=True), dataset=dataset,
                                     ranked_by=by, toolkit_rank_version=RANK_FORMAT))
    return combined


def rank(weights: Sequence[str | os.PathLike], *, dataset: str, model: str | None = None,
         by: str = DEFAULT_SCORE, out: str | os.PathLike | None = None,
         work_dir: str | os.PathLike | None = None, seeds: int = 3, overwrite: bool = False,
         fresh: bool = False, progress: bool = False, resamples: int = BOOTSTRAP,
         **options: Any) -> RankReport:
    """Probe, score and rank the classifiers of ``weights`` (``MODEL=PATH`` or ``PATH``).

    ``options`` are ``analyze``'s (``max_steps``, ``synthesizer``, ``metrics``, ...); the interval
    is 1.0 and ``seeds`` prototype seeds are drawn per model. With ``out``, the ranking is written
    there (work in ``<out without .nc>.work/``, kept for a resume until the file is written).
    """
    from toolkit.config import AnalysisConfig

    # every value checked before any work (huge or wrong numbers: one line); run options
    # (plots, progress, ...) go on to analyze as they are
    fields = {f.name for f in dataclasses.fields(AnalysisConfig)}
    AnalysisConfig(dataset=dataset, intervals=(1.0,), seeds=seeds,
                   **{k: v for k, v in options.items() if k in fields})
    entries = parse_entries(weights, model)
    get_registry("dataset").get(dataset)
    get_registry("score").get(by)  # an unknown score: the one-line error listing the scores
    if out is not None:
        check_writable(out, overwrite, folder_may_be_missing=True)
    temporary = work_dir is None and out is None
    work = Path(tempfile.mkdtemp(prefix="toolkit-rank-") if temporary
                else work_dir or Path(out).with_suffix(".work"))
    try:
        _claim(work, entries, dataset, seeds, options, fresh)
        with reusing_datasets():  # the data are read once for all the models
            results = _probe_each(entries, work, dataset, seeds, progress, options)
        combined = combine(entries, results, dataset, by, {"seeds": seeds, **options})
        report = RankReport(combined, by, correlations(combined, resamples))
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            write_results(combined, out, overwrite=overwrite)
        return report
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)


def _probe_each(entries: Sequence[Entry], work: Path, dataset: str, seeds: int, progress: bool,
                options: Mapping[str, Any]) -> list[xr.Dataset]:
    """Each model's results, probed into ``work/NNN/results.nc`` unless already there."""
    from toolkit.pipeline import analyze

    results = []
    for number, entry in enumerate(entries, 1):
        if progress:
            print(f"rank: model {number} of {len(entries)}: {entry.name} ({entry.model})",
                  file=sys.stderr)
        folder = work / f"{number:03d}"
        file = folder / "results.nc"
        if not file.is_file():
            analyze(model=entry.model, dataset=dataset, intervals=(1.0,), seeds=seeds,
                    checkpoints=stage_weights(entry, folder / "weights"), out=file,
                    progress=progress, **options)
        with xr.open_dataset(file) as ds:
            results.append(ds.load())
    return results


def _claim(work: Path, entries: Sequence[Entry], dataset: str, seeds: int,
           options: Mapping[str, Any], fresh: bool) -> None:
    """Take the work directory for this ranking: refuse one left by a different ranking (other
    models, weights or options) unless ``fresh``, which starts it over."""
    def kept(given: Mapping[str, Any]) -> dict[str, Any]:  # options that make the numbers
        return {k: v for k, v in given.items() if k not in ROUNDING_ONLY}

    identity = {"dataset": dataset, "seeds": seeds, "options": kept(options),
                "models": [[e.name, e.model, e.sha256] for e in entries]}
    record = work / "rank.json"
    if fresh and work.exists():
        shutil.rmtree(work)
    if record.is_file():
        found = json.loads(record.read_text())
        if isinstance(found, dict) and isinstance(found.get("options"), dict):
            found["options"] = kept(found["options"])  # written before an option left identities
        if found != json.loads(json.dumps(identity)):
            differ = sorted(k for k in identity if found.get(k) != json.loads(json.dumps(identity[k])))
            raise UsageError(f"{work} holds the work of another ranking ({', '.join(differ)} "
                             "differ); pass --fresh to discard it, or another --out")
        return
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / ".rank.json.tmp"
    tmp.write_text(json.dumps(identity, sort_keys=True, indent=1))
    os.replace(tmp, record)


def rank_table(report: RankReport) -> str:
    """The ranking and the correlations, as text."""
    ds, order = report.ds, report.order()
    acc = report.has_accuracy
    lines = [f"models ranked by {report.by} (best first; "
             + ("test accuracy shown for reference only" if acc else
                "no test split: ranked without accuracy") + ")",
             f"{'rank':>4}  {'model':<28} {'architecture':<26} {report.by:>12}"
             + (f" {'test acc':>9}" if acc else "")]
    for place, name in enumerate(order, 1):
        row = ds.sel(model=name)
        value = float(row["scores"].sel(score=report.by))
        lines.append(f"{place:>4}  {name:<28} {str(row['model_name'].values):<26} {value:>12.4f}"
                     + (f" {float(row['test_accuracy']):>9.3f}" if acc else ""))
    if not acc:
        return "\n".join(lines)
    lines += ["", f"each score against test accuracy over the models (95 % bootstrap intervals, "
                  f"{BOOTSTRAP} resamples):",
              f"{'score':<26} {'n':>3} {'Kendall tau':>24} {'Spearman rho':>24} {'expected':>9}"]
    for c in sorted(report.correlations, key=lambda c: -abs(c.kendall)
                    if np.isfinite(c.kendall) else 0):
        lines.append(f"{c.score:<26} {c.models:>3} {_with_ci(c.kendall, c.kendall_ci):>24} "
                     f"{_with_ci(c.spearman, c.spearman_ci):>24} "
                     f"{'+-'[c.expected < 0] if c.expected else 'none':>9}")
    if not report.correlations:
        lines.append("(fewer than 3 models with a value: no correlation)")
    return "\n".join(lines)


def _with_ci(value: float, ci: tuple[float, float]) -> str:
    return f"{value:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if np.isfinite(value) else "undefined"
