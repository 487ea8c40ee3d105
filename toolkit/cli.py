"""The command line: a thin class for Fire. Each command parses, calls the library and prints.

Before Fire runs anything, :func:`toolkit.arguments.prepare` checks the arguments against the
chosen command's options (an unknown or misspelt one is refused, naming the closest) and answers
``--help`` from the option table (:mod:`toolkit.options`) and these commands' docstrings."""
from __future__ import annotations

import inspect
import json
import os
import textwrap
from pathlib import Path

from toolkit.config import OPTIONS, RUN_OPTIONS, AnalysisConfig, RunOptions
from toolkit.errors import UsageError
from toolkit.files import check_new_folder
from toolkit.options import closest, parse_bool

GLOBAL_OPTIONS = ("plugins_dir", "disable_plugins", "limits")
METAVARS = {"plugins_dir": "FOLDER", "disable_plugins": "NAMES", "limits": "NAME=N,...", "out": "PATH",
            "format": "FORMATS", "figures": "NAMES", "seed": "N", "interval": "T", "hook": "NAME"}
WIDTH = 96


class Toolkit:
    """Probe image classifiers without data: prototypes, their dissimilarities, over training.

    Args:
        plugins_dir: also load every .py file in this folder as a plugin, without packaging it
            (as does the environment variable TOOLKIT_PLUGINS=FILE.py,DIR,...).
        disable_plugins: plugin names (as `toolkit plugins` shows them) or distribution names not
            to load, comma-separated (as does TOOLKIT_DISABLE_PLUGINS).
        limits: raise limits that guard memory against hostile input, for data you trust:
            NAME=N pairs, comma-separated, e.g. TOOLKIT_MAX_IMAGE_PIXELS=100000000 (as does the
            environment variable NAME). An error that hits a limit names it.
    """

    def __init__(self, plugins_dir: str | None = None, disable_plugins=None, limits=None):
        if plugins_dir is not None or disable_plugins is not None:
            from toolkit.plugins import configure

            configure(plugins_dir=plugins_dir, disable=disable_plugins)
        if limits is not None:
            import toolkit.results  # noqa: F401 (declares the results file's limit)
            from toolkit.limits import raise_limits
            from toolkit.plugins import get_plugin_manager

            get_plugin_manager()  # the plugins declare theirs when loaded
            raise_limits(limits)

    def analyze(self, **options) -> None:
        """Run the whole study and write one results file (netCDF), and its figures.

        Trains the model through the training intervals; at each one synthesises, for every seed,
        the class prototypes and the n x n grid of intermediary prototypes; computes C and R from
        their penultimate features; summarises them; prints the summary and the output path.
        """
        from toolkit import plotting
        from toolkit.pipeline import analyze, default_output
        from toolkit.table import summary_table

        config, run = analyze_options(options)
        path = Path(run.out) if run.out is not None else default_output(config)
        check_new_folder(path.parent)
        ds = analyze(config, out=path, checkpoints=run.checkpoints, fresh=run.fresh,
                     overwrite=run.overwrite, progress=run.progress, make_folder=True,
                     plots=run.plots)
        if ds is None:  # a torchrun rank other than 0: rank 0 writes and prints
            return
        print(summary_table(ds))
        print(f"results: {path}")
        if run.plots:
            folder = plotting.default_folder(path)
            print(f"figures: {folder}/ ({sum(1 for _ in folder.iterdir())} files)")

    def summary(self, results: str) -> None:
        """Print a results file's table: per interval, test accuracy, C/R mean and std, outliers,
        converged fraction and mean steps.

        Args:
            results: path of a results file (.nc) written by analyze.
        """
        from toolkit.table import summary_of

        print(summary_of(results))

    def metrics(self, results: str, metrics: str = "cosine,zscore", out: str | None = None,
                metric_options: str | None = None, save: str | None = None,
                overwrite: bool = False) -> None:
        """Compute metrics on a finished results file and write a new one: no training, no
        synthesis. Adds a metric, or recomputes them with other options (e.g. another z-score
        reference), from the features, records and probe variables the file holds.

        Args:
            results: a results file written by analyze.
            metrics: registered metrics to run, in order, comma-separated.
            out: the new results file (default: <results without .nc>.metrics.nc).
            metric_options: JSON of options per metric, as analyze's --metric_options.
            save: which n x n x n tensors the new file keeps (default: those the input kept).
            overwrite: replace an existing --out.
        """
        from toolkit.finished import remeasure
        from toolkit.table import summary_table

        path = Path(out) if out is not None else Path(results).with_suffix(".metrics.nc")
        ds = remeasure(results, metrics=metrics, out=path, metric_options=metric_options,
                       save=save, overwrite=parse_bool("overwrite", overwrite))
        print(summary_table(ds))
        print(f"results: {path}")

    def quality(self, *results: str, out: str | None = None, overwrite: bool = False) -> None:
        """Print how well each data-free score (C mean, R mean, C - R, boundary dissimilarity, Mg,
        Madv, outlier and unconverged fractions) tracks test accuracy: Spearman and Pearson
        correlation across the intervals of each file and, with several files, across all of them
        pooled; the sign expected and whether it holds; the scores ranked.

        Args:
            results: one or more results files (.nc) written by analyze.
            out: also draw each score against accuracy into this figure (.png, .pdf or .svg).
            overwrite: replace an existing figure.
        """
        from toolkit.quality_report import quality_table, run_quality

        report = run_quality(list(results), out, overwrite=parse_bool("overwrite", overwrite))
        print(quality_table(report))
        if out is not None:
            print(f"figure: {out}")

    def plot(self, results: str, out: str | None = None, format="png", figures=None,
             seed: int | None = None, interval: float | None = None, overwrite: bool = False) -> None:
        """Draw the figures of a results file into a folder and print their paths.

        Figures: means (C and R per interval), spreads (their std), outliers, accuracy (test
        accuracy beside C and R), prototypes (how class prototypes train), grid (the n x n grid
        P), heatmaps (C and R per class pair), convergence (steps and final loss per image).

        Args:
            results: path of a results file (.nc) written by analyze.
            out: folder for the figures; default RESULTS-without-.nc + ".figures/".
            format: file formats, comma-separated: png, pdf, svg.
            figures: which figures, comma-separated (default all).
            seed: the seed the prototypes and grid figures show (default the first).
            interval: the interval the grid figure shows (default the last), e.g. 0.5.
            overwrite: replace figures already in the folder.
        """
        from toolkit.plotting import plot

        for path in plot(results, out, format, figures, seed=seed, interval=interval,
                         overwrite=parse_bool("overwrite", overwrite)):
            print(path)

    def report(self, *results: str, out: str = "report.html", seed: int | None = None,
               interval: float | None = None, overwrite: bool = False) -> None:
        """Write one self-contained HTML page (figures embedded, no network needed) of one or
        more results files, side by side: configuration, summary table, convergence statistics
        and every figure with how to read it.

        Args:
            results: one or more results files (.nc) written by analyze.
            out: the page to write (.html).
            seed: the seed the prototypes and grid figures show (default the first).
            interval: the interval the grid figure shows (default the last).
            overwrite: replace an existing page.
        """
        from toolkit.reporting import report

        if not results:
            raise UsageError("report needs at least one results file: "
                             "toolkit report RESULTS.nc [MORE.nc ...]")
        page = report(list(results), out, seed=seed, interval=interval,
                      overwrite=parse_bool("overwrite", overwrite))
        print(f"report: {page}")

    def rank(self, *weights: str, dataset: str = "digits", model: str | None = None,
             by: str = "C_minus_R_converged", seeds: int = 3, out: str | None = None,
             overwrite: bool = False, fresh: bool = False, progress: bool = True,
             **options) -> None:
        """Rank classifiers by data-free scores: probe each one's weights (interval 1.0), score it
        with every registered score, print the models best first and, where the dataset has a test
        split, how each score tracks test accuracy (Kendall tau, Spearman rho, 95 % bootstrap
        intervals over models). A killed ranking resumes with the same command.

        Args:
            weights: weight files, MODEL=PATH (e.g. resnet18=a.pt) or PATH with --model: .pt
                state dicts (loaded as weights only) or .safetensors.
            dataset: registered dataset; gives the image shape and class names (and test accuracy
                where its test split is present).
            model: the architecture of every bare PATH.
            by: the score to rank by (see toolkit plugins --all, scores).
            seeds: prototype seeds per model (1 to 10,000).
            out: ranking file (.nc) with a model dimension; work in progress beside it.
            overwrite: replace an existing ranking file.
            fresh: discard the work an earlier ranking of this --out left, and start over.
            progress: show progress bars (--noprogress to hide).
        """
        from toolkit.ranking import rank, rank_table

        unknown = sorted(set(options) - set(RANK_PASSED))
        if unknown:
            raise UsageError(unknown_option(f"--{unknown[0]}", "rank", set(RANK_PASSED)))
        config = {k: v for k, v in vars(AnalysisConfig(**options)).items() if k in options}
        report = rank(list(weights), dataset=dataset, model=model, by=by,
                      seeds=seeds, out=out, overwrite=parse_bool("overwrite", overwrite),
                      fresh=parse_bool("fresh", fresh), progress=parse_bool("progress", progress),
                      **config)
        print(rank_table(report))
        if out is not None:
            print(f"ranking: {out}")

    def plugins(self, all: bool = False, hook: str | None = None) -> None:
        """Print the installed plugins as JSON: name, version, hooks, what each registers, and why
        a plugin that failed to load or raised in a hook was skipped.

        Without --all only the plugins installed besides the built-in ones are listed (when there
        are none, a note on stderr says so).

        Args:
            all: include the built-in plugins.
            hook: only the plugins that implement this hook, e.g. register_metrics.
        """
        import sys

        from toolkit.registry import describe_plugins

        all = parse_bool("all", all)
        listed = describe_plugins(builtins=all, hook=hook)
        print(json.dumps(listed, indent=2))
        if not all and not listed:  # not a bare [] that looks like nothing is installed
            print("toolkit: note: no plugins besides the built-in ones, which are hidden; pass --all "
                  "to list them too", file=sys.stderr)
        for entry in listed:  # what was skipped, said where a reader of the JSON may miss it
            for stage, error in entry["errors"].items():  # (a failed import warned as it loaded)
                if stage != "import" and not entry["disabled"]:
                    print(f"toolkit: warning: plugin {entry['name']!r}: {stage}: {error}",
                          file=sys.stderr)


# The analysis options ``rank`` passes on to each model's probe (not those of training, which it
# does not do, nor those it sets itself).
RANK_PASSED = tuple(opt.name for opt in OPTIONS if opt.name not in (
    "model", "dataset", "intervals", "schedule", "seeds", "epochs", "train_lr", "train_batch_size",
    "momentum", "weight_decay", "crop_padding", "flip"))


# ---- the analyze command's options, from the table ----------------------------------------------

def analyze_options(options: dict) -> tuple[AnalysisConfig, RunOptions]:
    """Split ``analyze``'s keyword options into the configuration and the run options; an unknown
    one is a ``UsageError`` naming the closest known option."""
    config_names = {opt.name for opt in OPTIONS}
    run_names = {opt.name for opt in RUN_OPTIONS}
    for name in options:
        if name not in config_names | run_names:
            raise UsageError(unknown_option(f"--{name}", "analyze", config_names | run_names))
    config = AnalysisConfig(**{k: v for k, v in options.items() if k in config_names})
    run = RunOptions(**{k: v for k, v in options.items() if k in run_names})
    return config, run


def _signature() -> inspect.Signature:
    keyword = inspect.Parameter.KEYWORD_ONLY
    return inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(opt.name, keyword, default=opt.default) for opt in OPTIONS + RUN_OPTIONS])


Toolkit.analyze.__signature__ = _signature()
Toolkit.analyze.__doc__ = (inspect.getdoc(Toolkit.analyze) + "\n\nArgs:\n" + "\n".join(
    textwrap.fill(f"{opt.name}: {opt.help}", WIDTH, initial_indent="    ", subsequent_indent="        ")
    for opt in OPTIONS + RUN_OPTIONS))


def unknown_option(option: str, command: str | None, known: set[str]) -> str:
    where = f"for {command}" if command else "before the command"
    near = closest(option.lstrip("-").replace("-", "_"), known)
    hint = f"; did you mean --{near}?" if near else f"; see toolkit {command or ''} --help".replace("  ", " ")
    return f"unknown option {option} {where}{hint}"
