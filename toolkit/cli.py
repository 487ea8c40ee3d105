"""The command line: a thin class for Fire. Each command parses, calls the library and prints.

Before Fire runs anything, :func:`prepare` checks the arguments against the chosen command's
options (an unknown or misspelt one is refused, naming the closest) and answers ``--help`` with
text written here, from the option table (:mod:`toolkit.options`) and the commands' docstrings."""
from __future__ import annotations

import inspect
import json
import os
import re
import textwrap
from pathlib import Path

from toolkit.config import OPTION, OPTIONS, RUN_OPTIONS, AnalysisConfig, RunOptions
from toolkit.errors import UsageError
from toolkit.options import Option, closest, parse_bool

GLOBAL_OPTIONS = ("plugins_dir", "disable_plugins")
METAVARS = {"plugins_dir": "FOLDER", "disable_plugins": "NAMES", "out": "PATH", "format": "FORMATS",
            "figures": "NAMES", "seed": "N", "interval": "T", "hook": "NAME"}
WIDTH = 96


class Toolkit:
    """Probe image classifiers without data: prototypes, their dissimilarities, over training.

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
        _check_new_folder(path.parent)
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

        report = quality(list(results), out, overwrite=parse_bool("overwrite", overwrite))
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
             by: str = "C_minus_R", seeds: int = 3, out: str | None = None,
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
            seeds: prototype seeds per model.
            out: ranking file (.nc) with a model dimension; work in progress beside it.
            overwrite: replace an existing ranking file.
            fresh: discard the work an earlier ranking of this --out left, and start over.
            progress: show progress bars (--noprogress to hide).
        """
        from toolkit.ranking import rank, rank_table

        unknown = sorted(set(options) - set(RANK_PASSED))
        if unknown:
            raise UsageError(_unknown(f"--{unknown[0]}", "rank", set(RANK_PASSED)))
        config = {k: v for k, v in vars(AnalysisConfig(**options)).items() if k in options}
        report = rank(list(weights), dataset=dataset, model=model, by=by,
                      seeds=int(seeds), out=out, overwrite=parse_bool("overwrite", overwrite),
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

        from toolkit import get_plugins

        all = parse_bool("all", all)
        listed = get_plugins(all=all, hook=hook)
        print(json.dumps(listed, indent=2))
        if not all and not listed:  # not a bare [] that looks like nothing is installed
            print("toolkit: note: no plugins besides the built-in ones, which are hidden; pass --all "
                  "to list them too", file=sys.stderr)


# ---- the analyze command's options, from the table ----------------------------------------------

def analyze_options(options: dict) -> tuple[AnalysisConfig, RunOptions]:
    """Split ``analyze``'s keyword options into the configuration and the run options; an unknown
    one is a ``UsageError`` naming the closest known option."""
    config_names = {opt.name for opt in OPTIONS}
    run_names = {opt.name for opt in RUN_OPTIONS}
    for name in options:
        if name not in config_names | run_names:
            raise UsageError(_unknown(f"--{name}", "analyze", config_names | run_names))
    config = AnalysisConfig(**{k: v for k, v in options.items() if k in config_names})
    run = RunOptions(**{k: v for k, v in options.items() if k in run_names})
    return config, run


def _signature() -> inspect.Signature:
    keyword = inspect.Parameter.KEYWORD_ONLY
    return inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(opt.name, keyword, default=opt.default) for opt in OPTIONS + RUN_OPTIONS])


def _option_help(opt: Option) -> str:
    """One option of ``analyze --help``: ``--name VALUE``, its help, default and limits."""
    head = f"  --{opt.name}" + (f" {opt.metavar}" if opt.metavar else f" / --no{opt.name}")
    facts = []
    if opt.default is None or opt.default == {}:
        pass
    elif isinstance(opt.default, bool):
        facts.append(f"default: {str(opt.default).lower()}")
    elif isinstance(opt.default, tuple):
        facts.append("default: " + ",".join(f"{v:g}" if isinstance(v, float) else str(v)
                                            for v in opt.default))
    else:
        facts.append(f"default: {opt.default}")
    if opt.limits():
        facts.append(f"whole number {opt.limits()}" + (" or auto" if "auto" in opt.metavar else ""))
    text = opt.help + (f" [{'; '.join(facts)}]" if facts else "")
    return head + "\n" + _fill(text, 6)


def _fill(text: str, indent: int) -> str:
    return textwrap.fill(text, WIDTH, initial_indent=" " * indent, subsequent_indent=" " * indent,
                         break_on_hyphens=False)


def _check_new_folder(folder: Path) -> None:
    """A folder ``--out`` will create must lie below an existing, writable folder."""
    if folder.exists():
        return
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out folder {str(folder)!r} cannot be created: {str(parent)!r} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out folder {str(folder)!r} cannot be created: {str(parent)!r} is not writable")


Toolkit.analyze.__signature__ = _signature()
Toolkit.analyze.__doc__ = (inspect.getdoc(Toolkit.analyze) + "\n\nArgs:\n" + "\n".join(
    textwrap.fill(f"{opt.name}: {opt.help}", WIDTH, initial_indent="    ", subsequent_indent="        ")
    for opt in OPTIONS + RUN_OPTIONS))


# ---- checking the arguments and answering --help, before Fire ------------------------------------

# The analysis options ``rank`` passes on to each model's probe (not those of training, which it
# does not do, nor those it sets itself).
RANK_PASSED = tuple(opt.name for opt in OPTIONS if opt.name not in (
    "model", "dataset", "intervals", "schedule", "seeds", "epochs", "train_lr", "train_batch_size",
    "momentum", "weight_decay", "crop_padding", "flip"))


def commands() -> dict[str, object]:
    """The commands, in the order the help lists them."""
    names = ("analyze", "summary", "quality", "rank", "plot", "report", "plugins")
    return {name: getattr(Toolkit, name) for name in names}


def _accepted(command: str | None) -> tuple[set[str], set[str]]:
    """The options ``command`` takes (with the global ones), and those of them that are flags."""
    if command is None:
        return set(GLOBAL_OPTIONS), set()
    if command == "analyze":
        return ({opt.name for opt in OPTIONS + RUN_OPTIONS} | set(GLOBAL_OPTIONS),
                {opt.name for opt in OPTIONS + RUN_OPTIONS if opt.is_flag})
    parameters = [p for p in inspect.signature(commands()[command]).parameters.values()
                  if p.name != "self" and p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                         inspect.Parameter.VAR_KEYWORD)]
    passed = [OPTION[name] for name in RANK_PASSED] if command == "rank" else []
    return ({p.name for p in parameters} | {opt.name for opt in passed} | set(GLOBAL_OPTIONS),
            {p.name for p in parameters if isinstance(p.default, bool)}
            | {opt.name for opt in passed if opt.is_flag})


def _unknown(option: str, command: str | None, known: set[str]) -> str:
    where = f"for {command}" if command else "before the command"
    near = closest(option.lstrip("-").replace("-", "_"), known)
    hint = f"; did you mean --{near}?" if near else f"; see toolkit {command or ''} --help".replace("  ", " ")
    return f"unknown option {option} {where}{hint}"


_FLAG = re.compile(r"^--?[A-Za-z_]")


def prepare(argv: list[str]) -> tuple[list[str], str | None]:
    """Check ``argv`` before Fire sees it. Returns the arguments for Fire (dashes in option names
    turned into underscores) and, when help was asked for (``-h``, ``--help``, or no command),
    the help text to print instead of running anything. Raises ``UsageError`` for an unknown
    command or option."""
    cut = argv.index("--") if "--" in argv else len(argv)
    args, tail = argv[:cut], argv[cut:]
    command, out, wants_help, i = None, [], False, 0
    while i < len(args):
        token = args[i]
        i += 1
        if token in ("-h", "--help"):
            wants_help = True
            continue
        if not _FLAG.match(token):
            if command is None:
                if token not in commands():
                    near = closest(token, commands())
                    raise UsageError(f"unknown command {token!r}" + (f"; did you mean {near}?" if near else "")
                                     + f" (commands: {', '.join(commands())})")
                command = token
            out.append(token)
            continue
        key, eq, value = token.lstrip("-").partition("=")
        key = key.replace("-", "_")
        known, flags = _accepted(command)
        if len(key) == 1 and token.startswith("-") and not token.startswith("--"):
            starting = sorted(name for name in known if name.startswith(key))
            if len(starting) != 1:
                raise UsageError(f"option {token} {'for ' + command if command else 'before the command'} "
                                 + (f"is ambiguous ({', '.join('--' + n for n in starting)}); spell it out"
                                    if starting else "is unknown"))
            key = starting[0]
        if key.startswith("no_") and key[3:] in flags:  # --no-plots, --no_plots: Fire's --noplots
            key = "no" + key[3:]
        if key not in known and not (key.startswith("no") and key[2:] in flags):
            if not wants_help and "-h" not in args and "--help" not in args:
                raise UsageError(_unknown(token.partition("=")[0], command,
                                          known | {"no" + name for name in flags}))
        out.append(f"--{key}{eq}{value}")
        if key in GLOBAL_OPTIONS and not eq and i < len(args):
            out.append(args[i])  # the value of a global option, never the command
            i += 1
    if wants_help or command is None:
        return out + tail, help_text(command)
    return out + tail, None


def help_text(command: str | None = None) -> str:
    """``toolkit --help`` (the commands) or ``toolkit COMMAND --help`` (its options), complete."""
    if command is None:
        lines = ["Usage: toolkit [--plugins_dir FOLDER] [--disable_plugins NAMES] COMMAND [OPTIONS]",
                 "", inspect.getdoc(Toolkit).split("\n\n")[0], "", "Commands:"]
        for name, function in commands().items():
            summary = re.split(r"(?<=[a-z)])[.:] ", " ".join(inspect.getdoc(function).split()))[0]
            summary = summary.rstrip(".") + "."
            lines.append(textwrap.fill(summary, WIDTH, initial_indent=f"  {name:<9} ",
                                       subsequent_indent=" " * 12))
        lines += ["", "Global options (before or after the command):"]
        lines += _args_help(inspect.getdoc(Toolkit))
        lines += [""] + textwrap.wrap(
            "Run toolkit COMMAND --help for a command's options. Options may be spelt with "
            "underscores or dashes (--max_steps, --max-steps); true/false options take --X, --noX "
            "or --X true|false|yes|no|1|0.", WIDTH)
        return "\n".join(lines)
    function = commands()[command]
    doc = inspect.getdoc(function)
    body = doc.split("\nArgs:\n")[0].strip()
    lines = [f"Usage: {_usage(command)}", ""]
    lines += ["\n\n".join(_fill(" ".join(par.split()), 0) for par in body.split("\n\n"))]
    lines += ["", _fill("Options may be spelt with underscores or dashes (--max_steps, --max-steps); "
                        "a true/false option takes --X, --noX or --X true|false|yes|no|1|0.", 0),
              "", "Options:"]
    if command == "analyze":
        lines += [_option_help(opt) for opt in OPTIONS]
        lines += ["", "Run options (not part of the configuration the results file records):"]
        lines += [_option_help(opt) for opt in RUN_OPTIONS]
    else:
        lines += _args_help(doc, function)
    if command == "rank":
        lines += ["", "Probe options (as analyze's, passed on to each model's probe):"]
        lines += [_option_help(OPTION[name]) for name in RANK_PASSED]
    lines += ["", "Global options: --plugins_dir FOLDER, --disable_plugins NAMES (see toolkit --help)."]
    return "\n".join(lines)


def _usage(command: str) -> str:
    if command == "analyze":
        return "toolkit analyze [--OPTION VALUE ...]"
    parts = [f"toolkit {command}"]
    for p in list(inspect.signature(commands()[command]).parameters.values())[1:]:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            parts.append(f"{p.name.upper()} [{p.name.upper()} ...]")
        elif p.kind is inspect.Parameter.VAR_KEYWORD:
            parts.append("[--OPTION VALUE ...]")
        elif p.default is inspect.Parameter.empty:
            parts.append(p.name.upper())
        elif isinstance(p.default, bool):
            parts.append(f"[--{p.name}]")
        else:
            parts.append(f"[--{p.name} {p.name.upper()}]")
    return " ".join(parts)


def _args_help(doc: str, function=None) -> list[str]:
    """The ``Args:`` entries of a docstring as ``--name`` lines (positional ones in capitals)."""
    section = doc.split("\nArgs:\n", 1)[1] if "\nArgs:\n" in doc else ""
    entries: list[list[str]] = []
    for line in section.splitlines():
        if re.match(r"^    \w+:", line):
            entries.append([line.strip()])
        elif line.startswith("        ") and entries:
            entries[-1].append(line.strip())
        elif line.strip():
            break
    parameters = inspect.signature(function).parameters if function is not None else {}
    lines = []
    for entry in entries:
        name, _, text = " ".join(entry).partition(":")
        p = parameters.get(name)
        if p is not None and (p.kind is inspect.Parameter.VAR_POSITIONAL or p.default is inspect.Parameter.empty):
            head = f"  {name.upper()}"
        elif p is not None and isinstance(p.default, bool):
            head = f"  --{name} / --no{name}"
        else:
            head = f"  --{name} {METAVARS.get(name, name.upper())}"
        if p is not None and p.default not in (inspect.Parameter.empty, None) and not isinstance(p.default, bool):
            text += f" [default: {p.default}]"
        lines.append(head + "\n" + _fill(text.strip(), 6))
    return lines
