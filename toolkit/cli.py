"""The command line: a thin class for Fire. Each command parses, calls the library and prints."""
from __future__ import annotations

import json
from pathlib import Path

from toolkit.config import AnalysisConfig

_D = AnalysisConfig  # field defaults, so the defaults have one home


class Toolkit:
    """Probe image classifiers without data: prototypes, their dissimilarities, over training.

    Commands: analyze (run the study), summary (table of a results file), plot (its figures),
    report (an HTML page of one or more results files), plugins (what is installed). Add --help
    after a command for its options.

    Args:
        plugins_dir: also load every .py file in this folder as a plugin, without packaging it
            (as does the environment variable TOOLKIT_PLUGINS=FILE.py,DIR,...).
        disable_plugins: plugin names (as `toolkit plugins` shows them) or distribution names not
            to load, comma-separated (as does TOOLKIT_DISABLE_PLUGINS).
    """

    def __init__(self, plugins_dir: str | None = None, disable_plugins=None):
        if plugins_dir is not None or disable_plugins is not None:
            from toolkit.plugins import configure

            configure(plugins_dir=plugins_dir, disable=disable_plugins)

    def analyze(self, model: str = _D.model, dataset: str = _D.dataset,
                intervals=",".join(f"{t:g}" for t in _D.intervals), schedule: str = _D.schedule,
                seeds: int = _D.seeds, seed: int = _D.seed, epochs: int | None = _D.epochs,
                synthesizer: str = _D.synthesizer, metrics=",".join(_D.metrics),
                metric_options=None, lr: float | None = _D.lr,
                loss_threshold: float = _D.loss_threshold, max_steps: int | None = _D.max_steps,
                fixed_steps: int | None = _D.fixed_steps, batch_size=_D.batch_size,
                block_rows=_D.block_rows,
                save_images: bool | None = _D.save_images, save=_D.save,
                train_lr: float | None = _D.train_lr, train_batch_size: int | None = _D.train_batch_size,
                data_root: str | None = _D.data_root, download: bool = _D.download,
                device: str = _D.device, precision: str = _D.precision, compile: bool = _D.compile,
                nonfinite: str = _D.nonfinite, out: str | None = None, overwrite: bool = False,
                fresh: bool = False, checkpoints: str | None = None, progress: bool = True,
                plots: bool = True) -> None:
        """Run the whole study and write one results file (netCDF), and its figures.

        Trains the model through the training intervals; at each one synthesises, for every seed,
        the class prototypes and the n x n grid of intermediary prototypes; computes C and R from
        their penultimate features; summarises them; prints the summary and the output path.

        Args:
            model: registered model (see `toolkit plugins`), e.g. resnet18, resnet18-tv, timm:NAME.
            dataset: registered dataset: digits (offline, bundled), cifar10, cifar100, imagefolder
                (your images: --data_root a folder or .zip with train/<class>/ and test/<class>/).
            intervals: training fractions to probe at, comma-separated, increasing, in (0, 1].
            schedule: data (nested data subsets, the authors') or epochs (one run, checkpointed).
            seeds: independent prototype initialisations per interval (the poster: 5).
            seed: first seed; the seeds are seed, seed+1, ...; also seeds training.
            epochs: training epochs per interval (schedule data) or in all (schedule epochs);
                default from the dataset.
            synthesizer: registered synthesis strategy; prototype is the paper's.
            metrics: registered metrics to run, in order, comma-separated.
            metric_options: JSON of options per metric, e.g. '{"zscore": {"reference": "seed"}}'.
            lr: synthesis step length in pixel space; default from the dataset
                (cifar100 0.1, cifar10 0.01, digits 0.1).
            loss_threshold: an image is done once its cross-entropy is below this.
            max_steps: most steps one image may take; default from the dataset (digits 100, else 1000).
            fixed_steps: every image takes exactly this many steps (authors' code: 250).
            batch_size: images optimised at once during synthesis; auto (default) chooses it
                from the device and image size (CPU: 128 at 32x32; GPU: 1024 at 32x32).
            block_rows: rows of one seed's grid per piece of synthesis work (what one rank does
                at a time, and what the work directory saves); auto (default): about 4
                micro-batches of images, so small grids stay whole.
            save_images: store the whole grid P of images in the file (--nosave_images to leave
                it out); default: on for up to 20 classes. Class prototypes are stored always.
            save: which n x n x n tensors the file keeps, comma-separated (C,R; default all), or
                none for their summaries only (for large n: C and R take 8 n^3 bytes per
                interval and seed). The features stay, so C and R can be computed again. With
                --metrics cosine_summaries they are streamed into the file block by block.
            train_lr: SGD learning rate for training, cosine-annealed per stage; default from the
                dataset (digits 0.1, else 0.05).
            train_batch_size: training batch size; default from the dataset (digits 32, else 128).
            data_root: folder holding the dataset files (default $TOOLKIT_DATA or ~/.cache/toolkit/data).
            download: allow downloading a missing dataset (--nodownload to forbid).
            device: auto, cpu, cuda or cuda:N.
            precision: fp32 (default) or bf16: the model under bfloat16 autocast for synthesis and
                training (loss, stopping test and images stay fp32); fast on CPUs with AMX and on GPUs.
            compile: run the model through torch.compile during synthesis (--compile).
            nonfinite: stop (NaN or Inf in losses or features stops the run, naming where) or
                record (they are recorded and the run goes on).
            out: results file (.nc); default results/MODEL-DATASET-HASH.nc, HASH of the options, so
                the same command writes the same file. Work in progress goes beside it, in
                OUT-without-.nc + ".work/": the training checkpoints (interval-<t>.pt, kept), and
                each finished seed's class prototypes and block of grid rows (dropped once the
                results file is written).
                Rerunning an interrupted command resumes from there.
            overwrite: replace an existing results file (and its figures).
            fresh: discard the work an earlier run of this --out left, and start over.
            checkpoints: folder of model weights to analyse instead of training, one file per
                interval named interval-<t>.pt (e.g. interval-0.25.pt): a state_dict, or a
                finished run's OUT.work folder. Loaded as weights only; files carrying pickled
                objects are refused.
            progress: show progress bars (--noprogress to hide).
            plots: draw the figures into OUT-without-.nc + ".figures/" (--noplots to skip).
        """
        from toolkit import plotting
        from toolkit.pipeline import analyze, default_output
        from toolkit.table import summary_table

        config = AnalysisConfig(
            model=model, dataset=dataset, intervals=intervals, schedule=schedule, seeds=seeds,
            seed=seed, epochs=epochs, synthesizer=synthesizer, metrics=metrics,
            metric_options=metric_options, lr=lr, loss_threshold=loss_threshold,
            max_steps=max_steps, fixed_steps=fixed_steps, batch_size=batch_size,
            block_rows=block_rows, save_images=save_images, save=save, train_lr=train_lr,
            train_batch_size=train_batch_size, data_root=data_root, download=download, device=device,
            precision=precision, compile=compile, nonfinite=nonfinite)
        path = Path(out) if out is not None else default_output(config)
        ds = analyze(config, out=path, checkpoints=checkpoints, fresh=fresh, overwrite=overwrite,
                     progress=progress, make_folder=out is None, plots=plots)
        if ds is None:  # a torchrun rank other than 0: rank 0 writes and prints
            return
        print(summary_table(ds))
        print(f"results: {path}")
        if plots:
            folder = plotting.default_folder(path)
            print(f"figures: {folder}/ ({sum(1 for _ in folder.iterdir())} files)")

    def summary(self, results: str) -> None:
        """Print a results file's table: per interval, test accuracy, C/R mean and std, outliers,
        converged fraction and mean steps.

        Args:
            results: path of a results file (.nc) written by analyze.
        """
        from toolkit.results import open_results
        from toolkit.table import summary_table

        with open_results(results) as ds:
            print(summary_table(ds))

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
        from toolkit import quality
        from toolkit.quality_report import quality_table

        report = quality(list(results), out, overwrite=overwrite)
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
                         overwrite=overwrite):
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
        from toolkit.errors import UsageError
        from toolkit.reporting import report

        if not results:
            raise UsageError("report needs at least one results file: "
                             "toolkit report RESULTS.nc [MORE.nc ...]")
        page = report(list(results), out, seed=seed, interval=interval, overwrite=overwrite)
        print(f"report: {page}")

    def plugins(self, all: bool = False, hook: str | None = None) -> None:
        """Print the installed plugins as JSON: name, version, hooks, what each registers, and why
        a plugin that failed to load or raised in a hook was skipped.

        Args:
            all: include the built-in plugins.
            hook: only the plugins that implement this hook, e.g. register_metrics.
        """
        from toolkit import get_plugins

        print(json.dumps(get_plugins(all=all, hook=hook), indent=2))
