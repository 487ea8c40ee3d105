"""The arguments of the command line, checked before Fire sees them, and ``--help``.

:func:`prepare` checks ``argv`` against the chosen command's options (an unknown or misspelt one is
refused, naming the closest; dashes become underscores) and answers ``--help`` with text written
here (:func:`help_text`), from the option table (:mod:`toolkit.options`) and the commands'
docstrings (:mod:`toolkit.cli`).
"""
from __future__ import annotations

import inspect
import re
import sys
import textwrap

from toolkit.cli import GLOBAL_OPTIONS, METAVARS, RANK_PASSED, WIDTH, Toolkit, unknown_option
from toolkit.config import OPTION, OPTIONS, RENAMED, RUN_OPTIONS, deprecation, renamed
from toolkit.errors import UsageError
from toolkit.options import Option, closest


def option_help(opt: Option) -> str:
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
    return head + "\n" + fill(text, 6)


def fill(text: str, indent: int) -> str:
    return textwrap.fill(text, WIDTH, initial_indent=" " * indent, subsequent_indent=" " * indent,
                         break_on_hyphens=False)


def commands() -> dict[str, object]:
    """The commands, in the order the help lists them."""
    names = ("analyze", "metrics", "summary", "quality", "rank", "plot", "report", "plugins")
    return {name: getattr(Toolkit, name) for name in names}


def accepted(command: str | None) -> tuple[set[str], set[str]]:
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


_FLAG = re.compile(r"^--?[A-Za-z_]")


def positional_limit(command: str) -> float:
    """How many positional arguments ``command`` takes (``inf`` for one of ``*args``): those
    without a default. Fire would fill the others from further bare values too (``plot r.nc
    --figures means spreads`` would write into ./spreads/), which the help never offers."""
    parameters = [p for p in inspect.signature(commands()[command]).parameters.values()
                  if p.name != "self"]
    if any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return float("inf")
    return sum(p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD and p.default is inspect.Parameter.empty
               for p in parameters)


def prepare(argv: list[str]) -> tuple[list[str], str | None]:
    """Check ``argv`` before Fire sees it. Returns the arguments for Fire (dashes in option names
    turned into underscores) and, when help was asked for (``-h``, ``--help``, or no command),
    the help text to print instead of running anything. Raises ``UsageError`` for an unknown
    command or option."""
    cut = argv.index("--") if "--" in argv else len(argv)
    args, tail = argv[:cut], argv[cut:]
    command, out, wants_help, i = None, [], False, 0
    value_of, positionals = None, 0  # the option a bare next token is the value of (Fire's rule)
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
            elif value_of is None:
                positionals += 1
                limit = positional_limit(command)
                if positionals > limit and not (wants_help or "-h" in args or "--help" in args):
                    # Fire would say so only after the work
                    after = f" after {args[i - 3]} {args[i - 2]}" if i >= 3 and args[i - 3].startswith("-") else ""
                    raise UsageError(f"unexpected argument {token!r} for {command}{after}: each option "
                                     f"takes one value, and {command} takes "
                                     + ("no positional argument" if not limit else
                                        f"{int(limit)} positional argument{'s' if limit > 1 else ''}"))
            value_of = None
            out.append(token)
            continue
        value_of = None
        key, eq, value = token.lstrip("-").partition("=")
        key = key.replace("-", "_")
        known, flags = accepted(command)
        if len(key) == 1 and token.startswith("-") and not token.startswith("--"):
            starting = sorted(name for name in known if name.startswith(key))
            if len(starting) != 1:
                raise UsageError(f"option {token} {'for ' + command if command else 'before the command'} "
                                 + (f"is ambiguous ({', '.join('--' + n for n in starting)}); spell it out"
                                    if starting else "is unknown"))
            key = starting[0]
        if key in RENAMED and RENAMED[key] in known and key not in known:
            given = {a.lstrip("-").partition("=")[0].replace("-", "_") for a in args if _FLAG.match(a)}
            if RENAMED[key] in given:
                renamed({key: None, RENAMED[key]: None})  # both names given: its one-line error
            print(f"toolkit: warning: {deprecation(key)}", file=sys.stderr)
            key = RENAMED[key]
        if key.startswith("no_") and key[3:] in flags:  # --no-plots, --no_plots: Fire's --noplots
            key = "no" + key[3:]
        if key not in known and not (key.startswith("no") and key[2:] in flags):
            if not wants_help and "-h" not in args and "--help" not in args:
                raise UsageError(unknown_option(token.partition("=")[0], command,
                                          known | {"no" + name for name in flags}))
        out.append(f"--{key}{eq}{value}")
        value_of = None if eq else key
        if key in GLOBAL_OPTIONS and not eq and i < len(args):
            out.append(args[i])  # the value of a global option, never the command
            i += 1
            value_of = None
    if wants_help or command is None:
        return out + tail, help_text(command)
    return out + tail, None


def help_text(command: str | None = None) -> str:
    """``toolkit --help`` (the commands) or ``toolkit COMMAND --help`` (its options), complete."""
    if command is None:
        lines = ["Usage: toolkit " + " ".join(f"[{flag}]" for flag in _global_flags()) + " COMMAND [OPTIONS]",
                 "", inspect.getdoc(Toolkit).split("\n\n")[0], "", "Commands:"]
        for name, function in commands().items():
            summary = re.split(r"(?<=[a-z)])[.:] ", " ".join(inspect.getdoc(function).split()))[0]
            summary = summary.rstrip(".") + "."
            lines.append(textwrap.fill(summary, WIDTH, initial_indent=f"  {name:<9} ",
                                       subsequent_indent=" " * 12))
        lines += ["", "Global options (before or after the command):"]
        lines += args_help(inspect.getdoc(Toolkit))
        lines += [""] + textwrap.wrap(
            "Run toolkit COMMAND --help for a command's options. Options may be spelt with "
            "underscores or dashes (--max_steps, --max-steps); true/false options take --X, --noX "
            "or --X true|false|yes|no|1|0.", WIDTH)
        return "\n".join(lines)
    function = commands()[command]
    doc = inspect.getdoc(function)
    body = doc.split("\nArgs:\n")[0].strip()
    lines = [f"Usage: {usage(command)}", ""]
    lines += ["\n\n".join(fill(" ".join(par.split()), 0) for par in body.split("\n\n"))]
    lines += ["", fill("Options may be spelt with underscores or dashes (--max_steps, --max-steps); "
                        "a true/false option takes --X, --noX or --X true|false|yes|no|1|0.", 0),
              "", "Options:"]
    if command == "analyze":
        lines += [option_help(opt) for opt in OPTIONS]
        lines += ["", "Run options (not part of the configuration the results file records):"]
        lines += [option_help(opt) for opt in RUN_OPTIONS]
    else:
        lines += args_help(doc, function)
    if command == "rank":
        lines += ["", "Probe options (as analyze's, passed on to each model's probe):"]
        lines += [option_help(OPTION[name]) for name in RANK_PASSED]
    lines += ["", f"Global options: {', '.join(_global_flags())} (see toolkit --help)."]
    return "\n".join(lines)


def _global_flags() -> list[str]:
    return [f"--{name} {METAVARS[name]}" for name in GLOBAL_OPTIONS]


def usage(command: str) -> str:
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


def args_help(doc: str, function=None) -> list[str]:
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
        lines.append(head + "\n" + fill(text.strip(), 6))
    return lines
