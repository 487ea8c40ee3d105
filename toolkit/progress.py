"""Progress bars for long work (tqdm on stderr, or a notebook's widget), off when the caller says so."""
from __future__ import annotations

import sys
from typing import Protocol

from tqdm.auto import tqdm


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> object: ...

    def close(self) -> None: ...


def progress_bar(description: str, total: int | None, enabled: bool = False,
                 unit: str = "step") -> ProgressBar:
    """A tqdm bar (``total`` None: a count without an end); a silent one unless ``enabled``."""
    return tqdm(total=total, desc=description, unit=unit, disable=not enabled, dynamic_ncols=True)


def interactive() -> bool:
    """Whether someone watches: stderr is a terminal, or this runs in a Jupyter kernel (where
    ``tqdm.auto`` draws widgets). The default of ``toolkit.analyze(progress=None)``."""
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # a closed or replaced stream
        pass
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    return get is not None and type(get()).__name__ == "ZMQInteractiveShell"
