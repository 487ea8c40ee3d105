"""Does a data-free score track test accuracy? Correlations of every score with accuracy.

For each score (registered by plugins with ``register_scores``) that a results file holds, its
Spearman and Pearson correlation with ``test_accuracy`` across the intervals of each file and,
when several files are given, across every (file, interval) point of them all (models and runs
pooled). Each score has the sign it is expected to have (or none, where no sign is claimed) and
whether its correlation has that sign. Scores are ranked by how well they track accuracy in their expected direction.

Few points make these correlations fragile: 7 intervals give a Spearman coefficient in steps of
1/56, and a p-value (``p``, scipy's two-sided test) is given with each for that reason.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr
from scipy import stats

from toolkit.contracts import Score
from toolkit.errors import PluginError, UsageError
from toolkit.plugins import Registration, blamed_on, get_registry


def scores() -> dict[str, Score]:
    """Every score the loaded plugins register (``register_scores``), by name, in registration
    order."""
    return {reg.name: reg.obj for reg in get_registry("score").in_order()}


def __getattr__(name: str) -> Any:
    if name == "SCORES":  # the registered scores, as this module once listed them
        return scores()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass(frozen=True)
class Correlation:
    """One score's correlation with test accuracy over the points of one scope."""

    score: str
    scope: str            # a file's label, or "all" for every file pooled
    points: int
    spearman: float
    spearman_p: float
    pearson: float
    pearson_p: float
    expected: int

    @property
    def holds(self) -> bool | None:
        """Whether Spearman's coefficient has the expected sign (None: no sign expected, or NaN)."""
        if self.expected == 0 or math.isnan(self.spearman):
            return None
        return self.spearman * self.expected > 0


@dataclasses.dataclass(frozen=True)
class QualityReport:
    """The correlations of every score in every scope, and the points behind them."""

    labels: tuple[str, ...]
    correlations: tuple[Correlation, ...]
    points: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # score -> label -> (score, acc)
    titles: tuple[str, ...] = ()  # each file's run: "resnet18 on digits, 5 seeds (0-4)"

    @property
    def overall_scope(self) -> str:
        return "all" if len(self.labels) > 1 else self.labels[0]

    def ranking(self) -> list[Correlation]:
        """The overall scope's correlations, best first: Spearman times the expected sign (its
        magnitude where no sign is expected); scores with no defined correlation last."""
        overall = [c for c in self.correlations if c.scope == self.overall_scope]

        def key(c: Correlation) -> float:
            if math.isnan(c.spearman):
                return -math.inf
            return c.spearman * c.expected if c.expected else abs(c.spearman)
        return sorted(overall, key=key, reverse=True)


def correlate(score: np.ndarray, accuracy: np.ndarray) -> tuple[float, float, float, float]:
    """(Spearman, its p, Pearson, its p) of two equally long arrays; NaN where undefined (fewer than
    3 finite points, or a constant input)."""
    keep = np.isfinite(score) & np.isfinite(accuracy)
    x, y = score[keep], accuracy[keep]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return (math.nan,) * 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = stats.spearmanr(x, y)
        r = stats.pearsonr(x, y)
    return float(rho.statistic), float(rho.pvalue), float(r.statistic), float(r.pvalue)


def quality(results: Sequence[xr.Dataset | str | os.PathLike],
            labels: Sequence[str] | None = None) -> QualityReport:
    """Correlate every data-free score of ``results`` with their test accuracy.

    Args:
        results: results files (paths, opened with :func:`toolkit.results.open_results`) or Datasets.
        labels: a name per file (default: the file names, or model/dataset for Datasets).

    Raises:
        UsageError: no files, or a missing or foreign file.
    """
    from toolkit.plotting import run_title
    from toolkit.results import open_results, validate

    items = list(results)
    if not items:
        raise UsageError("quality needs at least one results file: toolkit quality RESULTS.nc [MORE.nc ...]")
    registered = {reg.name: reg for reg in get_registry("score").in_order()}
    needs = {"test_accuracy", *(name for reg in registered.values() for name in reg.obj.needs)}
    runs: list[tuple[str, xr.Dataset]] = []
    titles = []
    for item in items:
        if isinstance(item, xr.Dataset):
            titles.append(run_title(validate(item)))
            runs.append((titles[-1], item))
        else:  # only what the scores read: a file's features and images stay on disk
            with open_results(item, needs=needs) as ds:
                runs.append((Path(item).name, ds[[n for n in needs if n in ds.variables]].load()))
                titles.append(run_title(ds))
    names = list(labels) if labels is not None else _unique([label for label, _ in runs])
    if len(names) != len(runs):
        raise UsageError(f"{len(names)} labels for {len(runs)} results files")
    points: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for score_name, registration in registered.items():
        for label, (_, ds) in zip(names, runs):
            if all(name in ds.variables for name in registration.obj.needs):
                accuracy = ds["test_accuracy"].values.astype(np.float64)
                points.setdefault(score_name, {})[label] = (_compute(registration, ds), accuracy)
    correlations = []
    for name, by_label in points.items():
        scopes = list(by_label.items())
        if len(runs) > 1:
            scopes.append(("all", (np.concatenate([s for s, _ in by_label.values()]),
                                   np.concatenate([a for _, a in by_label.values()]))))
        for scope, (score, accuracy) in scopes:
            correlations.append(Correlation(name, scope, int(np.isfinite(score).sum()),
                                            *correlate(score, accuracy), registered[name].obj.expected))
    return QualityReport(tuple(names), tuple(correlations), points, tuple(titles))


def _compute(registration: Registration, ds: xr.Dataset) -> np.ndarray:
    """The score's values, checked: one float per interval, or a one-line PluginError."""
    with blamed_on(registration, "failed"):
        values = np.asarray(registration.obj.compute(ds), dtype=np.float64)
    if values.shape != (ds.sizes["interval"],):
        raise PluginError(f"score {registration.name!r} (plugin {registration.plugin!r}) returned shape "
                          f"{values.shape}; expected ({ds.sizes['interval']},), one per interval")
    return values


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


SIGNS = {1: "+", -1: "-", 0: "none"}


def quality_rows(report: QualityReport) -> list[dict[str, object]]:
    """The ranking as table rows, then every per-file correlation when there are several files."""
    rows = []
    ranked = report.ranking()
    rest = [c for c in report.correlations if c.scope != report.overall_scope]
    for rank, c in enumerate(ranked, 1):
        rows.append(_row(c, rank))
    for c in rest:
        rows.append(_row(c, None))
    return rows


def _row(c: Correlation, rank: int | None) -> dict[str, object]:
    holds = {True: "yes", False: "NO", None: "-"}[c.holds]
    return {"rank": "" if rank is None else str(rank), "score": c.score, "scope": c.scope,
            "n": c.points, "spearman": c.spearman, "p_spearman": c.spearman_p, "pearson": c.pearson,
            "p_pearson": c.pearson_p, "expected": SIGNS[c.expected], "holds": holds}


# The columns of the quality table, as the text table and the HTML report show them.
QUALITY_COLUMNS = ("rank", "score", "scope", "n", "spearman", "p_spearman", "pearson", "p_pearson",
                   "expected", "holds")


def quality_cell(column: str, value: object) -> str:
    """One cell of the quality table as text: correlations signed to 3 places, p-values short."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.2g}" if column.startswith("p_") \
            else f"{value:+.3f}"
    return str(value)


def quality_table(report: QualityReport) -> str:
    """A plain-text table: the ranking (overall scope), then each file's correlations."""
    rows = quality_rows(report)
    columns = QUALITY_COLUMNS
    text = [[quality_cell(c, row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in text)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in text]
    lines.append("correlation with test accuracy across intervals"
                 + (" (scope all: every file's intervals pooled)" if len(report.labels) > 1 else "")
                 + "; ranked by Spearman in the expected direction; holds: its sign is the expected one")
    short = [c for c in report.correlations if c.scope == report.overall_scope and c.points < 3]
    if short:
        lines.append(f"nan: {len(short)} score(s) have fewer than 3 intervals with a value, and a "
                     "correlation needs at least 3; run analyze with more --intervals (e.g. "
                     "0.25,0.5,0.75,1) or pass several results files")
    flat = sorted({f"{c.score} ({c.scope})" for c in report.correlations
                   if c.points >= 3 and math.isnan(c.spearman)})
    if flat:
        lines.append(f"nan: {', '.join(flat)}: the score (or test accuracy) takes one value over "
                     "those intervals, and a correlation needs both to vary")
    return "\n".join(lines)


def quality_figure(report: QualityReport):
    """Each score against test accuracy, one panel per score, one colour per file; the labels
    (file, model and dataset names) drawn as plain text, never as mathtext."""
    from toolkit.plotting import plain_text

    with plain_text():  # a Text object takes parse_math when it is made
        return _draw_quality(report)


def _draw_quality(report: QualityReport):
    from toolkit.plotting import OKABE_ITO, new_figure

    names = [c.score for c in report.ranking()]
    colours = list(OKABE_ITO.values())[1:] + ["#000000"]
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig = new_figure(3.3 * columns, 2.8 * rows + 0.6)
    overall = {c.score: c for c in report.correlations if c.scope == report.overall_scope}
    for index, name in enumerate(names):
        ax = fig.add_subplot(rows, columns, index + 1)
        for number, label in enumerate(report.labels):
            if label in report.points[name]:
                score, accuracy = report.points[name][label]
                order = np.argsort(accuracy)
                ax.plot(accuracy[order], score[order], marker="o", markersize=4, linewidth=0.8,
                        color=colours[number % len(colours)], label=label)
        c = overall[name]
        ax.set_title(f"{name}: ρ={_fmt(c.spearman)}, r={_fmt(c.pearson)} (expected "
                     f"{SIGNS[c.expected]})", fontsize=8)
        ax.set_xlabel("test accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    if len(report.labels) > 1:
        fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside lower center",
                   ncols=min(4, len(report.labels)), fontsize=8, frameon=False)
    runs = "; ".join(title if len(report.labels) == 1 else f"{label}: {title}"
                     for label, title in zip(report.labels, report.titles))
    fig.suptitle("Data-free scores against test accuracy (each point an interval)"
                 + (f"\n{runs}" if runs else ""), fontsize=10)
    return fig


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:+.2f}"


def check_figure(out: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise ``UsageError`` unless the figure could be written at ``out``."""
    from toolkit.files import check_output
    from toolkit.plotting import FORMATS

    check_output(Path(out), tuple(f".{f}" for f in FORMATS), "a .png, .pdf or .svg file", overwrite,
                 folder_may_be_missing=True)  # created when the figure is written


def write_figure(report: QualityReport, out: str | os.PathLike, overwrite: bool = False,
                 dpi: int = 120) -> Path:
    """Save :func:`quality_figure` to ``out`` (png, pdf or svg), atomically; an existing file is
    kept unless ``overwrite``."""
    from toolkit.files import created_folder
    from toolkit.plotting import save_figure

    check_figure(out, overwrite)
    fig = quality_figure(report)
    with created_folder(Path(out).parent):  # removed again if the figure cannot be written
        return save_figure(fig, Path(out), dpi)


def run_quality(results, out=None, *, overwrite: bool = False, labels=None) -> "QualityReport":
    """``toolkit.quality``: the report of one results file or Dataset, or of several, and with
    ``out`` its figure, whose path is checked before any file is read."""
    items = [results] if isinstance(results, (str, os.PathLike)) or hasattr(results, "data_vars") \
        else list(results)
    if out is not None:
        check_figure(out, overwrite)  # a bad --out fails before any file is read
    report = quality(items, labels)
    if out is not None:
        write_figure(report, out, overwrite=overwrite)
    return report
