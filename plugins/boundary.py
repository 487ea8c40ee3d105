"""Boundary prototypes: for every ordered pair (j, k), an image on the decision boundary of j and k.

``B[k, j]`` starts from the class prototype ``p_j`` and the intermediary ``P[k, j]`` (``p_j``
pushed into class ``k``). An image is *on the boundary* when the model's two largest softmax
probabilities belong to ``j`` and ``k`` and differ by less than ``tolerance`` (default 0.01).
It is found in three moves, each only for the pairs the one before left off the boundary:

1. **Bisection** in pixel space on the segment from ``p_j`` to ``P[k, j]``, on the sign of
   ``softmax_k - softmax_j`` (negative at ``p_j``, positive at a converged ``P[k, j]``).
2. **Gradient steps** from that point with the active-set engine of :mod:`plugins.synthesis` (its
   one update rule, ``x <- clamp(x - lr g / ||g||, 0, 1)``), descending the cross-entropy toward the
   even split (1/2 on ``j``, 1/2 on ``k``), which pushes a third class down; an image stops as soon
   as it passes the boundary test, or after ``max_steps``.
3. **Bisection again**, from where the steps ended to whichever of ``p_j`` and ``P[k, j]`` lies on
   the other side of the boundary, to close the last gap the fixed-length steps leave.

Records per image: ``boundary_success`` (the final image passes the test, re-checked on the
model), ``boundary_steps`` (gradient steps of move 2), ``boundary_gap`` (``|softmax_k -
softmax_j|`` at the end) and ``boundary_third_class`` (the straight path crossed a third class:
after move 1 the top two classes were not ``{j, k}``). The diagonal ``B[k, k]`` holds ``p_k``, with
success False, gap NaN and no steps, as it has no boundary.

The synthesizer ``boundary`` synthesises ``P`` exactly as ``prototype`` does and then, as its
probe, ``B``; the ``cosine`` metric then gives ``BC`` and ``BR`` for ``B`` as it gives ``C`` and
``R`` for ``P``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import xarray as xr
from matplotlib.figure import Figure

import toolkit
from toolkit.model import extract_features
from toolkit.plotting import (cells, interval_axis, need, new_figure, percent, pick_classes,
                              pick_interval, pick_seed, run_title, show_mosaic, tile_centres)
from toolkit.schema import GRID, PIXELS
from toolkit_plugins.figures import COLOURS, DISSIMILARITY
from toolkit_plugins.metrics import pair_variables, summary_variables
from toolkit_plugins.synthesis import optimise, prototype

TOLERANCE = 0.01
BISECTIONS = 30


class EvenSplit:
    """The objective of move 2: cross-entropy toward 1/2 on ``j`` and 1/2 on ``k`` (targets are
    rows ``(j, k)``); arrived when the image is on the boundary within ``tolerance``."""

    def __init__(self, tolerance: float):
        self.tolerance = tolerance

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = logits.log_softmax(1)
        return -0.5 * (log_p.gather(1, targets).sum(1))

    def arrived(self, logits: torch.Tensor, loss: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return boundary_test(logits, targets, self.tolerance)[0]


def boundary_test(logits: torch.Tensor, pairs: torch.Tensor,
                  tolerance: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(on the boundary, the gap ``|p_k - p_j|``, top two classes are ``{j, k}``) per image."""
    p = logits.float().softmax(1)
    top2 = p.topk(2, dim=1).indices
    pair_on_top = ((top2 == pairs[:, :1]) | (top2 == pairs[:, 1:])).all(1)
    gap = (p.gather(1, pairs[:, 1:]) - p.gather(1, pairs[:, :1])).squeeze(1).abs()
    return pair_on_top & (gap < tolerance), gap, pair_on_top


@torch.no_grad()
def _logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(images[i:i + batch_size]).float()
                      for i in range(0, len(images), batch_size)]) if len(images) else \
        images.new_zeros((0, 0))


@torch.no_grad()
def bisect(model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, pairs: torch.Tensor,
           iterations: int = BISECTIONS, batch_size: int = 256) -> torch.Tensor:
    """The point of each segment ``a -> b`` where ``softmax_k - softmax_j`` changes sign.

    ``pairs`` holds rows ``(j, k)``. The sign at ``a`` is kept at the low end; where ``a`` and
    ``b`` have the same sign the answer tends to ``b``. Each iteration halves every segment.
    """
    def side(x: torch.Tensor) -> torch.Tensor:
        p = _logits(model, x, batch_size).softmax(1)
        return p.gather(1, pairs[:, 1:]).squeeze(1) >= p.gather(1, pairs[:, :1]).squeeze(1)

    shape = (-1, *([1] * (a.dim() - 1)))
    lo, hi = torch.zeros(len(a), device=a.device), torch.ones(len(a), device=a.device)
    at_a = side(a)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        same = side(torch.lerp(a, b, mid.view(shape))) == at_a
        lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
    return torch.lerp(a, b, ((lo + hi) / 2).view(shape))


def boundary_images(model: torch.nn.Module, origin: torch.Tensor, end: torch.Tensor,
                    pairs: torch.Tensor, settings: toolkit.SynthesisSettings,
                    tolerance: float = TOLERANCE,
                    progress: Optional[Callable[[int], None]] = None) -> dict[str, torch.Tensor]:
    """Boundary images between ``origin`` (class ``j`` images) and ``end`` (pushed into ``k``).

    ``pairs`` holds rows ``(j, k)``. Returns ``images`` and the records ``success``, ``steps``,
    ``gap`` and ``third_class`` (see the module docstring), all on the device of ``origin``.
    """
    size = settings.batch_size
    x = bisect(model, origin, end, pairs, batch_size=size)                              # move 1
    on, _, pair_on_top = boundary_test(_logits(model, x, size), pairs, tolerance)
    third_class = ~pair_on_top
    steps = torch.zeros(len(x), dtype=torch.int64, device=x.device)
    off = (~on).nonzero().squeeze(1)
    if len(off):                                                                        # move 2
        # Steps stop on arrival even when P was made with fixed steps (the authors' parity option).
        stepping = dataclasses.replace(settings, fixed_steps=None)
        stepped = optimise(model, x[off], pairs[off], stepping, progress, objective=EvenSplit(tolerance))
        x[off], steps[off] = stepped.images.to(x.dtype), stepped.steps.to(x.device)
        logits = _logits(model, x[off], size)
        still, _, top = boundary_test(logits, pairs[off], tolerance)
        polish = off[~still & top]
        if len(polish):                                                                 # move 3
            p = _logits(model, x[polish], size).softmax(1)
            k_side = (p.gather(1, pairs[polish, 1:]) >= p.gather(1, pairs[polish, :1])).squeeze(1)
            other = torch.where(k_side.view(-1, *([1] * (x.dim() - 1))), origin[polish], end[polish])
            x[polish] = bisect(model, x[polish], other, pairs[polish], batch_size=size)
    success, gap, _ = boundary_test(_logits(model, x, size), pairs, tolerance)
    return {"images": x, "success": success, "steps": steps, "gap": gap, "third_class": third_class}


def boundary_probe(model: torch.nn.Module, grid: torch.Tensor, records, settings,
                   progress: Optional[Callable[[int], None]] = None,
                   tolerance: float = TOLERANCE, *, rows: Optional[range] = None,
                   prototypes: Optional[torch.Tensor] = None) -> dict[str, np.ndarray]:
    """``B`` for a grid ``P`` of shape ``(seed, k, j, C, H, W)``: images, features and records,
    each with the leading dims ``(seed, k, j)`` (the variables of ``BOUNDARY``).

    On a block of rows, ``grid`` holds the rows ``k`` in ``rows`` and ``prototypes`` ``(seed, n,
    C, H, W)`` every ``p_j`` of its seeds; the arrays then have the leading dims ``(seed, row, j)``.
    """
    seeds, count, n = grid.shape[:3]
    rows = range(n) if rows is None else rows
    if prototypes is None:
        prototypes = grid[:, torch.arange(n), torch.arange(n)]
    device = next(model.parameters()).device
    s, r, j = torch.meshgrid(torch.arange(seeds), torch.arange(count), torch.arange(n), indexing="ij")
    k = torch.as_tensor(list(rows), dtype=torch.int64)[r]
    off = k != j
    pairs = torch.stack([j[off], k[off]], 1).to(device)
    found = boundary_images(model, prototypes[s[off], j[off]].to(device), grid[off].to(device),
                            pairs, settings, tolerance, progress)
    images = grid.clone()                           # the diagonal keeps p_k: it has no boundary
    images[off] = found["images"].detach().cpu()
    success = torch.zeros(off.shape, dtype=torch.bool)
    steps = torch.zeros(off.shape, dtype=torch.int64)
    gap = torch.full(off.shape, float("nan"))
    third = torch.zeros(off.shape, dtype=torch.bool)
    for out, name in ((success, "success"), (steps, "steps"), (gap, "gap"), (third, "third_class")):
        out[off] = found[name].detach().cpu().to(out.dtype)
    features = extract_features(model, images.flatten(0, 2), device=device)
    return {"B": images.numpy(), "B_features": features.view(seeds, count, n, -1).numpy(),
            "boundary_success": success.numpy(), "boundary_steps": steps.numpy(),
            "boundary_gap": gap.numpy().astype(np.float32), "boundary_third_class": third.numpy()}


def boundary(model: torch.nn.Module, start: torch.Tensor, targets: torch.Tensor,
             settings: toolkit.SynthesisSettings,
             progress: Optional[Callable[[int], None]] = None) -> toolkit.SynthesisResult:
    """``P`` as ``prototype`` makes it; ``B`` follows from ``P`` in the probe."""
    return prototype(model, start, targets, settings, progress)


# What the probe ``boundary`` adds: the boundary grid B, its features and its records.
BOUNDARY = {
    "B": toolkit.Variable((*GRID, *PIXELS), dict(
        long_name="boundary prototype B[k, j] between classes j and k (B[k, k] = p_k)", units="1"),
        image=True),
    "B_features": toolkit.Variable((*GRID, "feature"), dict(
        long_name="penultimate feature vector of B[k, j]", units="1"),
        grid=toolkit.FeatureGrid(prefix="B", images="B", kind="boundary prototype")),
    "boundary_success": toolkit.Variable(GRID, dict(
        long_name="B[k, j] is on the boundary: top two classes j and k, softmax gap below the "
                  "tolerance (False on the diagonal)")),
    "boundary_steps": toolkit.Variable(GRID, dict(
        long_name="gradient steps taken by B[k, j] after bisection", units="1")),
    "boundary_gap": toolkit.Variable(GRID, dict(
        long_name="|softmax_k - softmax_j| of B[k, j] (NaN on the diagonal)", units="1")),
    "boundary_third_class": toolkit.Variable(GRID, dict(
        long_name="the segment p_j -> P[k, j] crossed a third class")),
}


@toolkit.hookimpl
def register_probes(register):
    register("boundary", toolkit.Probe(boundary_probe, BOUNDARY, blocks=True),
             description="B[k, j] between p_j and P[k, j], its features and records")


@toolkit.hookimpl
def register_synthesizers(register):
    # BC, BR and their summaries: what the cosine metrics compute from the feature grid B_features.
    register("boundary", boundary, probe="boundary",
             variables={**pair_variables("B", "B", "boundary prototype"), **summary_variables("B")},
             description="P as prototype does, then B[k, j]: images on the decision boundary of j "
                         "and k (top two classes j and k, softmax gap < 0.01), by bisection between "
                         "p_j and P[k, j] refined by gradient steps")


@toolkit.hookimpl
def register_scores(register):
    register("BC_mean", toolkit.Score.of_variable(
        "BC_mean", +1, "toolkit's expectation, by analogy with C: boundary images of distinct "
                       "pairs separate"))
    register("BR_mean", toolkit.Score.of_variable("BR_mean", 0, "no sign claimed"))


def boundary_figure(ds: xr.Dataset, interval: float | None = None, seed: int | None = None,
                    classes: Sequence[int | str] | None = None) -> Figure:
    """The boundary grid ``B`` (synthesizer ``boundary``) at one interval and seed, beside the
    mean dissimilarity of boundary images (``BC``, ``BR``) and of ``C``, ``R`` against interval."""
    need(ds, ("B", "boundary_success"), "run analyze with --synthesizer boundary (and --save_images)")
    interval = pick_interval(ds, interval)
    seed = pick_seed(ds, seed)
    shown = pick_classes(ds, classes)
    at = dict(interval=interval, seed=seed)
    tiles = cells(ds, "B", at, shown)
    n = len(shown)
    fig = new_figure(6.4 + n * 0.5, 1.9 + max(n * 0.5, 3.0))
    left, right = fig.subplots(1, 2, width_ratios=[max(n * 0.5, 2.5), 4.0])
    pad = show_mosaic(left, tiles)
    h, w = tiles.shape[-2:]
    names = [str(c) for c in ds["class_name"].values[shown]]
    left.set_yticks(tile_centres(n, h, pad), names, fontsize=7)
    left.set_xticks(tile_centres(n, w, pad), names, fontsize=7)
    left.set_ylabel("class k")
    left.set_xlabel("origin class j (from p_j towards P[k, j])")
    success = cells(ds, "boundary_success", at, shown)
    off = ~np.eye(n, dtype=bool)
    rows, cols = np.nonzero(off & ~success.astype(bool))
    limits = left.get_xlim(), left.get_ylim()
    left.scatter(tile_centres(n, w, pad)[cols], tile_centres(n, h, pad)[rows], marker="x", s=30,
                 color=COLOURS["unconverged"], linewidths=1.2)
    left.set(xlim=limits[0], ylim=limits[1])
    left.set_title(f"B[k, j], {interval:.0%}, seed {seed}\nx: off the boundary "
                   f"({len(rows)} of {int(off.sum())})", fontsize=8)
    x = percent(ds)
    styles = {"C": ("C", "-"), "R": ("R", "-"), "BC": ("C", "--"), "BR": ("R", "--")}
    for v, (colour, line) in styles.items():
        if f"{v}_mean" in ds:
            right.plot(x, ds[f"{v}_mean"].values, color=COLOURS[colour], linestyle=line, marker="o",
                       markersize=3, label=f"{v} mean")
    # success rate over the off-diagonal cells of every seed
    rate = ds["boundary_success"].where(ds["k"] != ds["j"]).mean(("seed", "k", "j")).values
    interval_axis(right, ds)
    right.set_ylabel(f"mean {DISSIMILARITY}")
    right.set_title("on the boundary: " + ", ".join(f"{t:g}%: {r:.0%}" for t, r in zip(x, rate)),
                    fontsize=7, wrap=True)
    right.legend(fontsize=7, frameon=False)
    fig.suptitle(f"Boundary prototypes B and their dissimilarity (dashed) beside C and R\n"
                 f"{run_title(ds)}", fontsize=10)
    return fig


@toolkit.hookimpl
def register_figures(register):
    register("boundary", toolkit.FigureSpec(
        boundary_figure, "Boundary prototypes B",
        "Left: cell (k, j) holds B[k, j], an image on the decision boundary of classes j "
        "and k (the model's top two classes, their probabilities within the tolerance), "
        "found between p_j and P[k, j]; crosses mark pairs where none was found. Right: "
        "the mean dissimilarity of boundary images, BC (same origin) and BR (same target), "
        "dashed, beside C and R, against training; the rate of pairs on the boundary is "
        "in the title.",
        needs=("B", "boundary_success"), optional=True))
