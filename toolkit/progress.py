"""Progress bars for long work (tqdm on stderr), off when the caller says so."""
from __future__ import annotations

from typing import Protocol

from tqdm.auto import tqdm


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> object: ...

    def close(self) -> None: ...


def progress_bar(description: str, total: int | None, enabled: bool = False,
                 unit: str = "step") -> ProgressBar:
    """A tqdm bar (``total`` None: a count without an end); a silent one unless ``enabled``."""
    return tqdm(total=total, desc=description, unit=unit, disable=not enabled, dynamic_ncols=True)
