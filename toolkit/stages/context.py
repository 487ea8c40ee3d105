"""What the stages of one study share: its resolved plugins (:class:`Plan`) and the :class:`Run`."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from toolkit.config import AnalysisConfig
from toolkit.data import ImageDataset
from toolkit.distributed import Block, World
from toolkit.plugins import Registration, get_registry
from toolkit.progress import ProgressBar, progress_bar
from toolkit.synthesis import SynthesisSettings

# The stages whose time the results file records (``time_<stage>_s``).
TIMED = ("training", "synthesis", "features", "metrics", "probes")
# Work each rank does on its own share; rank 0 adds up every rank's (process-seconds).
SHARED = ("synthesis", "features", "probes")


@dataclasses.dataclass(frozen=True)
class Plan:
    """A validated configuration with its plugins resolved."""

    config: AnalysisConfig
    model: Registration
    dataset: Registration
    synthesizer: Registration
    metrics: tuple[Registration, ...]


def plan(config: AnalysisConfig) -> Plan:
    """Resolve every plugin the configuration names; ``UsageError`` for an unknown one."""
    return Plan(
        config=config,
        model=get_registry("model").get(config.model),
        dataset=get_registry("dataset").get(config.dataset),
        synthesizer=get_registry("synthesizer").get(config.synthesizer),
        metrics=tuple(get_registry("metric").get(name) for name in config.metrics),
    )


@dataclasses.dataclass
class Run:
    """One study once its pre-flight checks passed (:func:`toolkit.stages.preflight.prepare`).

    ``config`` carries the dataset's defaults; ``shape`` is one image's ``(n, C, H, W)`` with ``n``
    the classes; ``pieces`` the blocks of each interval's grids (:func:`toolkit.distributed.blocks`);
    ``streams`` the tensors written straight into the results file; ``work_dir`` the work
    directory named (None: a temporary one). ``seconds`` and ``image_steps``
    measure the work of the run: done in this process, plus what the finished work a resumed run
    reuses from the work directory cost the process that made it (saved with it), so they count
    what an uninterrupted run counts.
    """

    config: AnalysisConfig
    plan: Plan
    data: ImageDataset
    device: torch.device
    world: World
    probes: list[Registration]
    streams: list[str]
    shape: tuple[int, ...]
    synthesis: SynthesisSettings
    block_rows: int | str
    pieces: list[Block]
    work_dir: Path | None = None
    progress: bool = False
    started: float = dataclasses.field(default_factory=time.perf_counter)
    seconds: dict[str, float] = dataclasses.field(default_factory=lambda: dict.fromkeys(TIMED, 0.0))
    image_steps: int = 0
    precision_reason: str = "asked for"  # why the run's precision (toolkit.hardware)
    compile_reason: str = "asked for"  # why synthesis is compiled or not (toolkit.hardware)

    def bar(self, description: str, total: int | None, unit: str = "step") -> ProgressBar:
        """A progress bar on stderr; silent unless asked for, and on every rank but 0."""
        return progress_bar(description, total, enabled=self.progress, unit=unit)

    def add_up(self) -> bool:
        """Add every rank's share of the work into rank 0's clocks and image steps; True on rank 0.

        The grids of every rank count in ``image_steps``, so their time does too (process-seconds);
        training ran on all ranks at once and keeps rank 0's wall time.
        """
        spent = self.world.gather({**self.seconds, "image_steps": self.image_steps})
        if not self.world.main:
            return False
        for stage in SHARED:
            self.seconds[stage] = sum(part[stage] for part in spent)
        self.image_steps = sum(part["image_steps"] for part in spent)
        return True
