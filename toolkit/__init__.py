"""Probe image classifiers without data.

A classifier synthesises one prototype image per class, then intermediary prototypes pushed from
each class into every other; the cosine dissimilarities of their penultimate features (``C``: same
origin, ``R``: same target) are tracked over training. See ``toolkit.analyze``.
"""

from toolkit.config import AnalysisConfig
from toolkit.contracts import FeatureGrid, FigureSpec, Probe, Score, Variable
from toolkit.data import ImageDataset
from toolkit.errors import PluginError, ToolkitError, UsageError
from toolkit.hookspecs import hookimpl
from toolkit.synthesis import SynthesisResult, SynthesisSettings
from toolkit.version import __version__


def analyze(config=None, **options):
    """Run the whole study; see :func:`toolkit.pipeline.analyze`. The options are
    :class:`AnalysisConfig`'s fields and the run options of :func:`toolkit.pipeline.analyze`; a
    misspelt one is a ``UsageError`` naming the closest."""
    import inspect

    from toolkit.config import OPTIONS, renamed
    from toolkit.options import closest
    from toolkit.pipeline import analyze as _analyze

    options = renamed(options)
    known = {opt.name for opt in OPTIONS} | set(inspect.signature(_analyze).parameters) - {"options"}
    for name in options:
        if name not in known:
            near = closest(name, known)
            raise UsageError(f"unknown option {name!r} for toolkit.analyze"
                             + (f"; did you mean {near!r}?" if near else ""))
    return _analyze(config, **options)


def rank(weights, *, dataset, model=None, by="C_minus_R_converged", out=None, work_dir=None,
         seeds=3, overwrite=False, fresh=False, progress=False, resamples=2000, **options):
    """Rank classifiers by data-free scores, no test set needed, and return the
    :class:`toolkit.ranking.RankReport` (``toolkit.ranking.rank_table`` prints it); see
    :func:`toolkit.ranking.rank`, which this imports on first use."""
    from toolkit.config import renamed
    from toolkit.ranking import rank as _rank

    options = renamed(options)
    return _rank(weights, dataset=dataset, model=model, by=by, out=out, work_dir=work_dir,
                 seeds=seeds, overwrite=overwrite, fresh=fresh, progress=progress,
                 resamples=resamples, **options)


def remeasure(results, *, metrics, out, metric_options=None, save=None, overwrite=False):
    """Compute metrics on a finished results file and write a new one, without training or
    synthesis; see :func:`toolkit.finished.remeasure`, which this imports on first use."""
    from toolkit.finished import remeasure as _remeasure
    return _remeasure(results, metrics=metrics, out=out, metric_options=metric_options, save=save,
                     overwrite=overwrite)


def open_results(path, needs=None):
    """Open and validate a results file, lazily; see :func:`toolkit.results.open_results`."""
    from toolkit.results import open_results as _open

    return _open(path, needs)


def summary(results) -> str:
    """The summary table of a results file or Dataset, as text; see :func:`toolkit.table.summary_of`."""
    from toolkit.table import summary_of

    return summary_of(results)


def get_plugins(all: bool = False, hook: str | None = None) -> list[dict]:
    """The loaded plugins as ``toolkit plugins`` lists them: name, version, hooks, what each
    registers, whether it is disabled, and the errors that made the toolkit skip it or a hook of it.

    Args:
        all: include the built-in plugins.
        hook: only the plugins that implement this hook, e.g. ``"register_metrics"``.
    """
    from toolkit.plugins import describe_plugins

    return describe_plugins(builtins=all, hook=hook)


def plot(results, out=None, formats=("png",), figures=None, *, overwrite=False, dpi=150, seed=None,
         interval=None, classes=None, on_skip=None):
    """Draw the figures of a results file into a folder (default beside it) and return their
    paths; see :func:`toolkit.plotting.plot`, which this imports on first use."""
    from toolkit.plotting import plot as _plot

    return _plot(results, out, formats, figures, overwrite=overwrite, dpi=dpi, seed=seed,
                 interval=interval, classes=classes, on_skip=on_skip)


def report(results, out="report.html", *, overwrite=False, dpi=110, seed=None, interval=None):
    """Write one self-contained HTML page of one or more results files and return its path; see
    :func:`toolkit.reporting.report`, which this imports on first use."""
    from toolkit.reporting import report as _report

    return _report(results, out, overwrite=overwrite, dpi=dpi, seed=seed, interval=interval)


def quality(results, out=None, *, overwrite=False, labels=None):
    """How well each data-free score tracks test accuracy in one or more results files (paths or
    Datasets); with ``out``, also draw each score against accuracy there. Returns the
    :class:`toolkit.quality_report.QualityReport`; see :func:`toolkit.quality_report.quality`."""
    from toolkit.quality_report import run_quality

    return run_quality(results, out, overwrite=overwrite, labels=labels)


__all__ = [
    "AnalysisConfig", "ImageDataset", "PluginError", "SynthesisResult", "SynthesisSettings",
    "ToolkitError", "UsageError", "__version__", "analyze", "hookimpl", "remeasure", "open_results",
    "summary",
    "get_plugins", "plot", "report", "quality", "rank",
    "FeatureGrid", "FigureSpec", "Probe", "Score", "Variable",
]
