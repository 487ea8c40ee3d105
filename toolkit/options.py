"""How an option is declared, once: name, type, default, help text and limits, as metadata of a
dataclass field (:func:`option`). :class:`toolkit.config.AnalysisConfig` (the options that decide
the numbers, recorded as JSON in the results file) and :class:`toolkit.config.RunOptions` (how one
run is carried out: where it writes, whether it resumes) are declared this way; the command line's
signature, parsing and ``--help``, the Python API's checks and the config's docstring all come from
those two declarations (:func:`table`)."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Iterable

from toolkit.errors import UsageError

NO_FALLBACK = object()
TRUE = ("true", "yes", "1", "on")
FALSE = ("false", "no", "0", "off")


@dataclasses.dataclass(frozen=True)
class Option:
    """One option as the table holds it.

    Attributes:
        name: the keyword (``--name`` on the command line; ``--name-with-dashes`` works too).
        type: the annotation of the field, as text (``"int | None"``).
        default: the default value (None: left to the dataset or chosen at run time).
        help: what it does, written once for ``--help``, the docs and the API.
        low, high: the smallest and largest whole number allowed (None: no bound).
        fallback: the value a dataset plugin's defaults fall back to when this option is left at
            None (``NO_FALLBACK``: the option is not one a dataset may give a default for).
        config: whether it is a field of :class:`toolkit.config.AnalysisConfig` (recorded in the
            results file, hashed into the default output name) or a run option.
        metavar: how its value is shown in ``--help`` (``""`` for a true/false flag).
    """

    name: str
    type: str
    default: Any
    help: str
    low: int | None = None
    high: int | None = None
    fallback: Any = NO_FALLBACK
    config: bool = True
    metavar: str = "VALUE"

    @property
    def is_flag(self) -> bool:
        return self.metavar == ""

    def limits(self) -> str:
        """``"1 to 10000"``, ``">= 0"``, or ``""``."""
        if self.low is not None and self.high is not None:
            return f"{self.low} to {self.high}"
        if self.low is not None:
            return f">= {self.low}"
        return f"<= {self.high}" if self.high is not None else ""


def option(default: Any = None, help: str = "", *, low: int | None = None, high: int | None = None,
           fallback: Any = NO_FALLBACK, metavar: str | None = None, config: bool = True,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field declaring one option (see :class:`Option` for the arguments)."""
    metadata = {"help": help, "low": low, "high": high, "fallback": fallback, "config": config,
                "metavar": metavar}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def table(*classes: type) -> tuple[Option, ...]:
    """The options the dataclasses ``classes`` declare with :func:`option`, in declaration order."""
    rows = []
    for cls in classes:
        for field in dataclasses.fields(cls):
            meta = field.metadata
            default = (field.default_factory() if field.default_factory is not dataclasses.MISSING
                       else field.default)
            type_ = field.type if isinstance(field.type, str) else getattr(field.type, "__name__",
                                                                           str(field.type))
            metavar = meta.get("metavar")
            if metavar is None:
                metavar = _metavar(type_)
            rows.append(Option(field.name, type_, default, meta.get("help", ""), meta.get("low"),
                               meta.get("high"), meta.get("fallback", NO_FALLBACK),
                               meta.get("config", True), metavar))
    return tuple(rows)


def _metavar(type_: str) -> str:
    base = type_.replace(" ", "").replace("|None", "")
    return {"bool": "", "int": "N", "float": "X", "str": "NAME"}.get(base, "VALUE")


def parse_bool(name: str, value: Any, optional: bool = False,
               choices: str = "true or false") -> bool | None:
    """``value`` as True or False: a bool, 1 or 0, or true/false/yes/no/on/off/1/0 in any case
    (``choices``: what the error message says is allowed)."""
    if optional and value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise UsageError(f"--{name} must be {choices}; got {value!r}")


def check_int(opt: Option, value: Any, optional: bool = False) -> None:
    """Raise ``UsageError`` unless ``value`` is a whole number within the option's limits."""
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or (opt.low is not None and value < opt.low):
        at_least = f" >= {opt.low}" if opt.low is not None else ""
        raise UsageError(f"--{opt.name} must be a whole number{at_least}; got {_short(value)}")
    if opt.high is not None and value > opt.high:
        raise UsageError(f"--{opt.name} must be at most {opt.high}; got {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} characters)"


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name nearest to a misspelt one, or None when none is near."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None
