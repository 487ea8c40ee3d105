"""A synthesised piece of a grid measured: its features, its probes, its records, as units.

A *unit* is one seed's share of a piece: a dict of arrays (``features`` ``(row, j, feature)``, the
per-image records, ``prototypes``, ``P`` when images are kept, the probes' variables), what the work
directory saves and :mod:`toolkit.stages.assemble` stacks into the Dataset.
"""
from __future__ import annotations

import time
from typing import Mapping

import numpy as np
import torch

from toolkit import probes as probing, results
from toolkit.distributed import Block
from toolkit.errors import NumericalError
from toolkit.model import NormalizedClassifier, extract_features
from toolkit.stages.context import Run
from toolkit.synthesis import SynthesisResult


def measure_block(run: Run, model: NormalizedClassifier, block: Block, grid: torch.Tensor,
                  records: Mapping[str, torch.Tensor], start: SynthesisResult) -> list[dict[str, np.ndarray]]:
    """The units of ``block``, one per seed: ``grid`` ``(seed, row, j, C, H, W)`` and its
    ``records``, synthesised from the class prototypes ``start`` of the block's seeds."""
    clock = time.perf_counter()
    feats = extract_features(model, grid.flatten(0, 2), device=next(model.parameters()).device)
    feats = feats.view(*grid.shape[:3], -1).numpy()
    run.seconds["features"] += time.perf_counter() - clock
    clock = time.perf_counter()
    probed = probing.run_probes(run.probes, model, grid, records, run.synthesis, rows=block.rows,
                                prototypes=start.images.view(len(block.seeds), *run.shape))
    run.seconds["probes"] += time.perf_counter() - clock
    diagonal = (torch.arange(len(block.rows)), torch.as_tensor(list(block.rows)))
    keep_images = run.config.save_images
    return [{"features": feats[index],
             **{name: value[index].numpy() for name, value in records.items()},
             "prototypes": results.to_uint8(grid[index][diagonal].numpy()),
             **({"P": results.to_uint8(grid[index].numpy())} if keep_images else {}),
             **{name: value[index] for name, value in probed.items()
                if keep_images or not probing.is_image(name)}}
            for index in range(len(block.seeds))]


def check_finite(unit: Mapping[str, np.ndarray], fraction: float, seed: int, mode: str,
                 rows: range | None = None) -> None:
    """``NumericalError`` naming the interval, seed (and rows) when ``mode`` is "stop" and a
    unit's losses or features hold NaN or Inf."""
    bad = ~(np.isfinite(unit["features"]).all(-1) & np.isfinite(unit["loss"]))
    if bad.any() and mode == "stop":
        where = ("" if rows is None or len(rows) == bad.shape[-1] else f", row k = {rows.start}"
                 if len(rows) == 1 else f", rows k = {rows.start} to {rows.stop - 1}")
        raise NumericalError(f"interval {fraction:.0%}, seed {seed}{where}: {int(bad.sum())} of {bad.size} "
                             "images have NaN or Inf losses or features; lower --lr, or pass "
                             "--nonfinite record to record them and continue")
