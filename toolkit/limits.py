"""Limits a user can raise, for input that could exhaust memory.

Each is a whole number of bytes, pixels or the like, named ``TOOLKIT_MAX_...``, declared by the
module that enforces it (:func:`env_limit`). A user raises one for data they trust, on the command
line (``--limits TOOLKIT_MAX_IMAGE_PIXELS=100000000``, any command) or through the environment
variable of the same name (which also reaches every rank of a torchrun job); an error that hits a
limit names both.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Mapping

from toolkit.errors import UsageError

KNOWN: dict[str, str] = {}  # limit name -> what it bounds, for every limit declared so far
_WHOLE = re.compile(r"[0-9]+(_[0-9]+)*")  # as Python writes whole numbers: 100000000, 100_000_000


def env_limit(name: str, default: int, what: str) -> int:
    """The limit ``name``: the environment's value (a whole number >= 1), else ``default``."""
    KNOWN.setdefault(name, what)
    value = os.environ.get(name)
    if value is None:
        return default
    if not _positive(value):
        raise UsageError(f"{name}={value!r} must be a whole number >= 1 ({what})")
    return int(value)


def _positive(value: str) -> bool:
    """Whether ``value`` is a whole number >= 1 (``100000000``, ``100_000_000``, spaces around)."""
    return bool(_WHOLE.fullmatch(value.strip())) and int(value) >= 1


def declare(limits: Mapping[str, tuple[int, str]]) -> None:
    """Make ``{name: (default, what)}`` known to ``--limits`` before any of them is read."""
    for name, (_, what) in limits.items():
        KNOWN.setdefault(name, what)


def how_to_raise(name: str) -> str:
    """The end of an error that hit the limit ``name``."""
    return f"raise it with --limits {name}=N (or the environment variable {name}) if you trust the data"


def raise_limits(spec: str | Mapping[str, object] | Iterable[str]) -> None:
    """Apply ``--limits``: ``NAME=N`` pairs, comma-separated (or a mapping), each a known limit and
    a whole number >= 1, set for this process and the processes it starts."""
    if isinstance(spec, Mapping):
        pairs = [(str(k), str(v)) for k, v in spec.items()]
    else:
        if not isinstance(spec, (str, list, tuple)):  # e.g. Fire's 5 for --limits 5
            raise UsageError(f"--limits {spec!r}: give NAME=N pairs, comma-separated, e.g. "
                             "TOOLKIT_MAX_IMAGE_PIXELS=100000000")
        items = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
        pairs = []
        for item in filter(None, (s.strip() for s in items)):
            name, eq, value = item.partition("=")
            if not eq:
                raise UsageError(f"--limits {item!r}: give NAME=N, e.g. TOOLKIT_MAX_IMAGE_PIXELS=100000000")
            pairs.append((name.strip(), value.strip()))
    for name, value in pairs:
        if name not in KNOWN:
            raise UsageError(f"--limits: unknown limit {name!r}; the limits are "
                             + ", ".join(f"{k} ({w})" for k, w in sorted(KNOWN.items())))
        if not _positive(value):
            raise UsageError(f"--limits {name}={value!r}: the limit must be a whole number >= 1 "
                             f"({KNOWN[name]})")
    for name, value in pairs:
        os.environ[name] = str(int(value))
