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
    """Run the whole study; see :func:`toolkit.pipeline.analyze`."""
    from toolkit.pipeline import analyze as _analyze

    return _analyze(config, **options)


def open_results(path):
    """Open and validate a results file; see :func:`toolkit.results.open_results`."""
    from toolkit.results import open_results as _open

    return _open(path)


def summary(results) -> str:
    """The summary table of a results file or Dataset, as text."""
    from toolkit.results import open_results as _open
    from toolkit.table import summary_table

    if isinstance(results, (str, bytes)) or hasattr(results, "__fspath__"):
        with _open(results) as ds:
            return summary_table(ds)
    return summary_table(results)


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
    import os

    from toolkit.quality_report import check_figure, quality as _quality, write_figure

    items = [results] if isinstance(results, (str, os.PathLike)) or hasattr(results, "data_vars") \
        else list(results)
    if out is not None:
        check_figure(out, overwrite)  # a bad --out fails before any file is read
    report = _quality(items, labels)
    if out is not None:
        write_figure(report, out, overwrite=overwrite)
    return report


__all__ = [
    "AnalysisConfig", "ImageDataset", "PluginError", "SynthesisResult", "SynthesisSettings",
    "ToolkitError", "UsageError", "__version__", "analyze", "hookimpl", "open_results", "summary",
    "get_plugins", "plot", "report", "quality",
    "FeatureGrid", "FigureSpec", "Probe", "Score", "Variable",
]
