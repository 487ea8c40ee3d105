"""Progress bars for long work (tqdm on stderr, or a notebook's widget), off when the caller says so."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Protocol

import torch
from torch import nn

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


class StepProgress:
    """Synthesis progress counted in image steps, the unit its time goes by, not in images.

    An image that converges takes a few steps, one that runs to the step cap takes ``cap``: a bar
    counting images races through the first and then stalls, its ETA off by the ratio. Here the
    bar counts the images the model runs, as it runs them (:meth:`counting`: one per image and
    step, plus each image's last stopping test), so it moves with the work even while no image
    finishes, and never backwards. Its total is the work done plus the images left times the work
    an image has taken on average so far (``cap`` before any work queue has finished), never more
    than the images left could take (``cap`` steps and a last test each). Without a counted model
    (a compiled one), the synthesizer's callback credits finished images at that average and
    :meth:`settle` adds the exact steps of a finished work queue. ``images`` None: a count without
    a total (a torchrun rank's share).
    """

    def __init__(self, bar: ProgressBar, images: int | None, cap: int):
        self.bar, self.cap, self.left, self.images = bar, max(1, int(cap)), images, images
        self.units = self.settled = self.credit = self.reported = self.shown = 0
        self.counted = False  # the current work queue is counted as the model runs
        self._total()

    def per_image(self) -> float:
        return self.units / self.settled if self.settled else float(self.cap)

    def _show(self, n: int) -> None:
        self.shown += n
        self.bar.update(n)

    def _total(self, refresh: bool = True) -> None:
        if self.left is not None and not getattr(self.bar, "disable", False):
            guess = self.units + self.credit + round(self.left * self.per_image())
            bound = self.units + (self.images - self.settled) * (self.cap + 1)
            self.bar.total = max(min(guess, bound), self.shown + self.left)
            if refresh:
                self.bar.refresh()

    @contextlib.contextmanager
    def counting(self, model: nn.Module, enabled: bool = True) -> Iterator[None]:
        """While a work queue runs on ``model``: count the images it runs as they are run (the
        images through its last ``Linear`` layer, its classifier in nearly every model). Without
        such a layer (or ``enabled`` False: a compiled model), finished images count the average
        instead."""
        head = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not enabled or getattr(self.bar, "disable", False) or not head:
            yield
            return

        def count(module, inputs):
            if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dim() > 0:
                self.credit += int(inputs[0].shape[0])
                self._total(refresh=False)  # tqdm redraws on update, at most every 0.1 s
                self._show(int(inputs[0].shape[0]))
        handle = head[-1].register_forward_pre_hook(count)
        self.live = self.counted = True
        try:
            yield
        finally:
            handle.remove()
            self.live = False

    live = False  # images counted as the model runs them (:meth:`counting`)

    def finished(self, images: int) -> None:
        """The synthesizer's callback: ``images`` more of the current work queue are done."""
        self.reported += images
        if self.left is not None:
            self.left -= images
        if not self.live:
            credit = round(images * self.per_image())
            self.credit += credit
            self._show(credit)
        self._total()

    def settle(self, images: int, steps: int) -> None:
        """A work queue of ``images`` images finished after ``steps`` image steps in all: a
        counted queue cost what was counted; otherwise the bar makes up the steps it was not
        credited (an estimate above them stays shown: the bar never goes back)."""
        if self.left is not None:
            self.left -= images - self.reported  # those the callback did not report
        if not self.counted and steps > self.credit:
            self._show(steps - self.credit)
        self.units += self.credit if self.counted else steps
        self.settled += images
        self.credit = self.reported = 0
        self.counted = False
        self._total()

    def close(self) -> None:
        self.bar.close()
