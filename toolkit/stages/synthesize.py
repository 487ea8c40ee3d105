"""Each interval's grids ``P``: the class prototypes, then every row, in fixed pieces.

Two phases, each in fixed pieces that are one work queue each (:mod:`toolkit.distributed`): the
class prototypes of groups of seeds, then the blocks of rows of the grids. The ranks of a torchrun
job take the pieces as they go; each piece is saved in the work directory as soon as it is done
(where the ranks also find each other's prototypes) and reused from there only whole, so a piece
not on disk is synthesised again exactly as an uninterrupted run of any number of ranks makes it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from toolkit import distributed, results
from toolkit.errors import PluginError, UsageError
from toolkit.hardware import check_compile, guessed_steps, resolve_compile
from toolkit.model import NormalizedClassifier, frozen, step_flops
from toolkit.plugins import Registration
from toolkit.progress import StepProgress
from toolkit.stages.context import Run
from toolkit.stages.features import check_finite, measure_block
from toolkit.synthesis import SynthesisResult, SynthesisSettings
from toolkit.training import Stage
from toolkit.workdir import WorkDir

Arrays = dict[str, np.ndarray]
FIELDS = ("images", *results.RECORDS)  # what a SynthesisResult holds, and a prototypes file


def choose_compile(run: Run, model: NormalizedClassifier) -> None:
    """Settle ``--compile auto`` (:func:`toolkit.hardware.resolve_compile`) from the run's own
    ``model``, on rank 0 for every rank: its FLOPs per image-step, and one rank's share of what the
    whole run synthesises (at each interval the class prototypes and the grids' blocks), resumed or
    not, so that the same command decides the same on the same hardware."""
    def work() -> tuple[float, int, int]:
        n, settings = run.shape[0], run.synthesis
        interval = len(run.config.seed_values) * n + sum(block.images(n) for block in run.pieces)
        images = math.ceil(len(run.config.intervals) * interval / run.world.size)
        steps = guessed_steps(settings.max_steps, settings.fixed_steps)
        return step_flops(model, run.shape[1:], run.device), images, steps

    compiled, run.compile_reason = run.world.from_main(lambda: resolve_compile(
        run.config.compile, run.device, run.synthesis.precision, work, torch.get_num_threads()))
    if compiled and run.config.compile == "auto":  # each rank must build what rank 0 chose (an
        check_compile(True, run.device)             # asked-for --compile was checked in preflight)
    run.synthesis = dataclasses.replace(run.synthesis, compile=compiled)


def synthesize_prototypes(model: NormalizedClassifier, synthesizer: Registration, noise: torch.Tensor,
                          settings: SynthesisSettings, progress=None) -> SynthesisResult:
    """The class prototypes of every seed of ``noise`` ``(seed, n, C, H, W)``, one work queue:
    ``p_c`` of seed ``s`` starts from ``noise[s, c]`` toward ``c``, at index ``s * n + c``."""
    seeds, n = noise.shape[:2]
    return synthesize_images(model, synthesizer, noise.flatten(0, 1), torch.arange(n).repeat(seeds),
                             settings, progress)


def synthesize_rows(model: NormalizedClassifier, synthesizer: Registration,
                    prototypes: SynthesisResult, seeds: int, rows: range, settings: SynthesisSettings,
                    progress=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rows ``k`` in ``rows`` of the grids ``P`` of ``seeds`` seeds, one work queue.

    ``prototypes`` holds the class prototypes of those seeds (index ``s * n + c``, as
    :func:`synthesize_prototypes` returns them). Every ``P[s, k, j]`` with ``k != j`` starts from
    ``p_j`` of seed ``s`` toward ``k``; ``P[s, k, k]`` is ``p_k`` with the records of its synthesis
    from noise. Returns the images ``(seed, row, j, C, H, W)`` and records ``(seed, row, j)``.
    """
    n = len(prototypes.images) // seeds
    s, r, j = torch.meshgrid(torch.arange(seeds), torch.arange(len(rows)), torch.arange(n),
                             indexing="ij")
    k = torch.as_tensor(list(rows), dtype=torch.int64)[r]
    off = k != j
    origin = s * n + j                                  # the prototype each P[s, k, j] starts from
    moved = synthesize_images(model, synthesizer, prototypes.images[origin[off]], k[off], settings,
                              progress)
    images = prototypes.images[origin].clone()           # the diagonal is ready: p_k itself
    images[off] = moved.images
    records = {}
    for field in results.RECORDS:
        grid = getattr(prototypes, field)[origin].clone()
        grid[off] = getattr(moved, field)
        records[field] = grid
    return images, records


def synthesize_grid(model: NormalizedClassifier, synthesizer: Registration, num_classes: int,
                    noise: torch.Tensor, settings: SynthesisSettings,
                    progress=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The whole grids ``P`` (seed, k, j, C, H, W) and their records (seed, k, j) of the seeds of
    ``noise`` ``(seed, n, C, H, W)``: their prototypes as one work queue, then every row as another.

    :func:`synthesize_interval` runs the same two phases in fixed pieces
    (:func:`toolkit.distributed.blocks`), since the last bits of a step can depend on the
    micro-batch's make-up (measured: ResNet18 on the CPU at batch size 1); with one block per
    phase its grids are these.
    """
    prototypes = synthesize_prototypes(model, synthesizer, noise, settings, progress)
    return synthesize_rows(model, synthesizer, prototypes, noise.shape[0], range(num_classes),
                           settings, progress)


def synthesize_images(model: NormalizedClassifier, synthesizer: Registration, start: torch.Tensor,
                      targets: torch.Tensor, settings: SynthesisSettings, progress) -> SynthesisResult:
    """One work queue of the synthesizer plugin: each image of ``start`` toward its target class."""
    device = next(model.parameters()).device
    steps = progress if isinstance(progress, StepProgress) else None
    with (steps.counting(model, enabled=not settings.compile) if steps is not None
          else contextlib.nullcontext()):
        result = synthesizer.obj(model, start.to(device), targets.to(device), settings,
                                 progress=progress.finished if steps is not None else progress)
    if not isinstance(result, SynthesisResult):
        raise PluginError(f"synthesizer {synthesizer.name!r} returned {type(result).__name__}, "
                          "not a toolkit.SynthesisResult")
    result = result.check(start, synthesizer.name)
    if steps is not None:
        steps.settle(len(start), int(result.steps.sum()))
    return result


def initial_noise(shape: tuple[int, ...], seeds: list[int]) -> torch.Tensor:
    """The uniform noise the class prototypes of each seed start from, ``(seed, *shape)``: the
    same at every interval, and drawn again for the results file rather than kept."""
    return torch.stack([torch.rand(shape, generator=torch.Generator().manual_seed(seed))
                        for seed in seeds])


def synthesize_interval(run: Run, model: NormalizedClassifier, stage: Stage,
                        work: WorkDir) -> list[Arrays] | None:
    """One interval's grids, each rank doing its share: one unit per seed (the arrays of its whole
    grid, in seed order) on rank 0, None on the others."""
    fraction, n = stage.fraction, run.shape[0]
    with frozen(model):
        # Rank 0 alone looks at the work directory and tells the others (before anyone adds a
        # file), so every rank works through the same lists even where a shared filesystem shows
        # files late.
        todo, groups = run.world.from_main(lambda: left_to_do(run, work, fraction))
        # This rank's bar counts its own images: all of them in one process; under torchrun, the
        # ranks take pieces as they go, so rank 0's share is not known in advance.
        where = f"interval {run.config.intervals.index(fraction) + 1}/{len(run.config.intervals)}"
        # counted in image steps (StepProgress), which is what synthesis time goes by
        images = None if run.world.distributed else (
            sum(len(group) * n for group in groups) + sum(b.images(n) for b in todo))
        progress = StepProgress(
            run.bar(f"probe {fraction:.0%} ({where}, acc {stage.test_accuracy:.3f})", None,
                    unit="step"), images, run.synthesis.fixed_steps or run.synthesis.max_steps)
        made = make_prototypes(run, model, fraction, groups, work, progress)
        run.world.barrier()  # every rank reads what it needs from the work directory, once all are written
        done = make_blocks(run, model, fraction, todo, Prototypes(work, fraction, made), work, progress)
        progress.close()
    return collect(run, work, fraction, done)


def left_to_do(run: Run, work: WorkDir, fraction: float) -> tuple[list[distributed.Block], list[list[int]]]:
    """The blocks of the interval not all in the work directory, and the groups of seeds whose
    prototypes those blocks need and the work directory lacks."""
    todo = [block for block in run.pieces
            if not all(work.unit(fraction, seed, block.rows).is_file() for seed in block.seeds)]
    needed = {seed for block in todo for seed in block.seeds}
    groups = [group for group in distributed.seed_groups(run.config.seed_values, run.shape[0],
                                                         run.synthesis.batch_size)
              if needed.intersection(group)
              and not all(work.prototypes(fraction, seed).is_file() for seed in group)]
    # What the finished pieces reused here cost the run that made them counts as this run's
    # (image steps, seconds), as it would in an uninterrupted run; a piece redone counts once.
    redone = {seed for group in groups for seed in group}
    reused = [work.prototypes(fraction, seed) for seed in run.config.seed_values if seed not in redone]
    reused += [work.unit(fraction, seed, block.rows) for block in run.pieces if block not in todo
               for seed in block.seeds]
    for path in reused:
        if path.is_file():
            spent = work.spent(path)
            run.image_steps += int(spent.pop("image_steps", 0))
            for stage, seconds in spent.items():
                run.seconds[stage] = run.seconds.get(stage, 0.0) + seconds
    return todo, groups


def make_prototypes(run: Run, model: NormalizedClassifier, fraction: float, groups: list[list[int]],
                    work: WorkDir, progress: StepProgress) -> dict[int, Arrays]:
    """The class prototypes of the ``groups`` this rank claims, each seed's saved at once."""
    n, made = run.shape[0], {}
    for number in distributed.claim(run.world, [len(group) for group in groups]):
        group = groups[number]
        clock = time.perf_counter()
        result = synthesize_prototypes(model, run.plan.synthesizer, initial_noise(run.shape, group),
                                       run.synthesis, progress)
        seconds = time.perf_counter() - clock
        run.seconds["synthesis"] += seconds
        run.image_steps += int(result.steps.sum())
        for index, seed in enumerate(group):
            made[seed] = {name: getattr(result, name)[index * n:(index + 1) * n].numpy()
                          for name in FIELDS}
            work.save_prototypes(fraction, seed, made[seed], spent={
                "image_steps": int(made[seed]["steps"].sum()), "synthesis": seconds / len(group)})
    return made


class Prototypes:
    """The class prototypes of one interval, by seed: this rank's own, and the others' read from
    the work directory when a block needs them (the last two kept: a rank's next blocks mostly
    share them)."""

    def __init__(self, work: WorkDir, fraction: float, made: dict[int, Arrays]):
        self.work, self.fraction, self.made, self.held = work, fraction, made, dict(made)

    def __getitem__(self, seed: int) -> Arrays:
        if seed not in self.held:
            if len(self.held) > len(self.made) + 1:
                del self.held[next(s for s in self.held if s not in self.made)]
            self.held[seed] = finished(self.work.load_prototypes(self.fraction, seed),
                                       self.work.prototypes(self.fraction, seed))
        return self.held[seed]


def make_blocks(run: Run, model: NormalizedClassifier, fraction: float, todo: list[distributed.Block],
                prototypes: Prototypes, work: WorkDir,
                progress: StepProgress) -> dict[tuple[int, int], Arrays]:
    """The units of the blocks this rank claims, by (seed, first row), each saved at once."""
    n, done = run.shape[0], {}
    for number in distributed.claim(run.world, [block.images(n) for block in todo]):
        block = todo[number]
        start = [prototypes[seed] for seed in block.seeds]
        start = SynthesisResult(**{name: torch.from_numpy(np.concatenate([p[name] for p in start]))
                                   for name in FIELDS})
        clock = time.perf_counter()
        grid, records = synthesize_rows(model, run.plan.synthesizer, start, len(block.seeds),
                                        block.rows, run.synthesis, progress)
        seconds = {"synthesis": time.perf_counter() - clock}
        run.seconds["synthesis"] += seconds["synthesis"]
        diagonal = records["steps"][:, torch.arange(len(block.rows)), torch.as_tensor(list(block.rows))]
        steps = records["steps"].sum((1, 2)) - diagonal.sum(1)  # per seed
        run.image_steps += int(steps.sum())
        before = {stage: run.seconds[stage] for stage in ("features", "probes")}
        units = measure_block(run, model, block, grid, records, start)
        seconds.update({stage: run.seconds[stage] - before[stage] for stage in before})
        for index, (seed, unit) in enumerate(zip(block.seeds, units)):
            # kept even when faulty: --nonfinite record may reuse it
            work.save_unit(fraction, seed, block.rows, unit, spent={
                "image_steps": int(steps[index]),
                **{stage: value / len(block.seeds) for stage, value in seconds.items()}})
            done[seed, block.start] = unit
            check_finite(unit, fraction, seed, run.config.nonfinite, block.rows)
    return done


def collect(run: Run, work: WorkDir, fraction: float,
            done: dict[tuple[int, int], Arrays]) -> list[Arrays] | None:
    """Every rank's blocks on rank 0, with the ones finished before from the work directory, joined
    into one unit per seed (in seed order); None on the other ranks."""
    gathered = run.world.gather(done)
    if not run.world.main:
        return None
    for part in gathered:
        done.update(part)
    units = []
    for seed in run.config.seed_values:
        parts = [done[seed, block.start] if (seed, block.start) in done
                 else finished(work.load_unit(fraction, seed, block.rows),
                               work.unit(fraction, seed, block.rows))
                 for block in run.pieces if seed in block.seeds]
        unit = parts[0] if len(parts) == 1 else {
            name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        check_finite(unit, fraction, seed, run.config.nonfinite)
        units.append(unit)
    return units


def finished(arrays: Arrays | None, path: Path) -> Arrays:
    """What a finished piece's file holds; one line when it has gone missing during the run."""
    if arrays is None:
        raise UsageError(f"{path} was finished but is gone from the work directory (all ranks "
                         "must see the same work directory); rerun the same command to redo it")
    return arrays
