"""Limits a user can raise through the environment, for input that could exhaust memory.

Each is a whole number of bytes, pixels or the like, named ``TOOLKIT_MAX_...``; an error that hits
one names the variable, so raising it is the user's decision, made for data they trust.
"""
from __future__ import annotations

import os
import re

from toolkit.errors import UsageError


def env_limit(name: str, default: int, what: str) -> int:
    """The limit ``name``: the environment's value (a whole number >= 1), else ``default``."""
    value = os.environ.get(name)
    if value is None:
        return default
    if not re.fullmatch(r"[0-9]+", value.strip()) or int(value) < 1:
        raise UsageError(f"{name}={value!r} must be a whole number >= 1 ({what})")
    return int(value)
