"""The figures of the grid images and of the synthesis records (registered by
``toolkit_plugins.figures``), and the scores the records give.

Records-based scores: the share of unconverged images and the mean steps per image (baselines any
score must beat to be worth its cost), and the converged-only ``C`` and ``R``. An intermediary
prototype that never reached the loss threshold is wherever the step cap left it, so ``C`` and
``R`` over all images partly measure the budget, not the classifier. The converged-only scores
count a pair of ``C`` (``P[k, j]``, ``P[i, j]``, ``i != k``) or of ``R`` (``P[k, j]``,
``P[k, i]``, ``i != j``) only when both of its images converged, pooled over seeds, per interval
(NaN where no pair counts); ``converged_pairs`` says how many values they rest on.
``C_minus_R_converged`` is the model zoo's pre-registered primary score
(``examples/zoo-digits/PREREGISTRATION.md``).
"""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import toolkit
from toolkit.plotting import (COLOURS as BASE_COLOURS, OKABE_ITO, cells, need, new_figure,
                              percent, pick_classes, pick_interval, pick_seed, run_title,
                              show_mosaic, subset_note, tile_centres)

GRID = ("interval", "seed", "k", "j")
COLOURS = {**BASE_COLOURS, "converged": OKABE_ITO["blue"]}


def prototypes(ds: xr.Dataset, seed: int | None = None,
               classes: Sequence[int | str] | None = None) -> Figure:
    """Figure 5: how class prototypes train: the starting noise, then each interval's prototype,
    one row per class, for one seed."""
    need(ds, ("prototypes",), "files written by analyze since toolkit 0.1 store them; rerun analyze")
    seed = pick_seed(ds, seed)
    shown = pick_classes(ds, classes)
    protos = ds["prototypes"].sel(seed=seed).isel({"class": shown}).transpose("class", "interval", ...)
    columns = [f"{t:g}%" for t in percent(ds)]
    tiles = protos.values
    if "noise" in ds:
        tiles = np.concatenate([ds["noise"].sel(seed=seed).isel({"class": shown}).values[:, None],
                                tiles], axis=1)
        columns = ["start\n(noise)"] + columns
    rows, cols = tiles.shape[:2]
    cell = 0.75 if rows <= 10 else 0.45
    fig = new_figure(max(4.8, 2.0 + cols * cell), 1.7 + rows * cell)
    ax = fig.add_subplot()
    pad = show_mosaic(ax, tiles)
    h, w = tiles.shape[-2:]
    names = [str(n) for n in ds["class_name"].values[shown]]
    ax.set_yticks(tile_centres(rows, h, pad), names, fontsize=8)
    ax.set_xticks(tile_centres(cols, w, pad), columns, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_ylabel("class")
    ax.set_xlabel("training completed", labelpad=6)
    ax.xaxis.set_label_position("top")
    missing = "" if "noise" in ds else "; starting noise not in this file"
    fig.suptitle(f"How class prototypes train, seed {seed}{subset_note(shown, ds.sizes['class'])}"
                 f"{missing}\n{run_title(ds)}", fontsize=10)
    return fig


def grid(ds: xr.Dataset, interval: float | None = None, seed: int | None = None,
         classes: Sequence[int | str] | None = None) -> Figure:
    """Figure 6: the intermediary grid ``P`` for one interval and seed: row k (target class),
    column j (origin class); the diagonal holds the class prototypes. Unconverged images are
    crossed out. For more than ``MAX_CLASSES`` classes, an evenly spaced subset."""
    need(ds, ("P",), "rerun analyze with --save_images (on by default for up to 20 classes)")
    interval = pick_interval(ds, interval)
    seed = pick_seed(ds, seed)
    shown = pick_classes(ds, classes)
    at = dict(interval=interval, seed=seed)
    tiles = cells(ds, "P", at, shown)
    n = len(shown)
    cell = 0.6 if n <= 10 else 0.42
    fig = new_figure(2.2 + n * cell, 1.9 + n * cell)
    ax = fig.add_subplot()
    pad = show_mosaic(ax, tiles)
    h, w = tiles.shape[-2:]
    names = [str(c) for c in ds["class_name"].values[shown]]
    fontsize = 8 if n <= 12 else 6
    ax.set_yticks(tile_centres(n, h, pad), names, fontsize=fontsize)
    ax.set_xticks(tile_centres(n, w, pad), names, fontsize=fontsize,
                  rotation=90 if max(map(len, names)) > 3 else 0)
    ax.set_ylabel("target class k (pushed into)")
    ax.set_xlabel("origin class j (started from its prototype)")
    for d in range(n):  # on the tile's own edge, so it neither hides a neighbour nor is clipped
        ax.add_patch(Rectangle((d * (w + pad) - 0.5, d * (h + pad) - 0.5), w, h, fill=False,
                               edgecolor=COLOURS["highlight"], linewidth=1.5, clip_on=False))
    converged = cells(ds, "converged", at, shown)
    rows, cols = np.nonzero(~converged.astype(bool))
    limits = ax.get_xlim(), ax.get_ylim()
    ax.scatter(tile_centres(n, w, pad)[cols], tile_centres(n, h, pad)[rows], marker="x",
               s=40, color=COLOURS["unconverged"], linewidths=1.5)
    ax.set(xlim=limits[0], ylim=limits[1])  # the marks must not widen the view beyond the images
    fig.suptitle(f"Intermediary prototypes P[k, j] at {interval:.0%} of training, seed {seed}"
                 f"{subset_note(shown, ds.sizes['k'])}\n{run_title(ds)}\noutlined: class "
                 f"prototypes (diagonal); x: not converged ({len(rows)} of {n * n})", fontsize=10)
    return fig


def convergence(ds: xr.Dataset) -> Figure:
    """Figure 8: per-image convergence: histograms of steps and of final loss, converged and not
    stacked, with the unconverged images counted per interval."""
    need(ds, ("steps", "loss", "converged"), "every results file should hold them")
    config = json.loads(ds.attrs.get("config", "{}"))
    converged = ds["converged"].values.astype(bool).ravel()
    steps = ds["steps"].values.ravel().astype(float)
    loss = ds["loss"].values.ravel().astype(float)
    fig = new_figure(10.0, 4.6)
    left, right = fig.subplots(1, 2)
    colours = [COLOURS["converged"], COLOURS["unconverged"]]
    labels = [f"converged ({converged.sum()})", f"not converged ({(~converged).sum()})"]

    low, high = int(steps.min()), int(steps.max())
    step_bins = np.linspace(low, high + 1, min(40, high - low + 1) + 1)
    left.hist([steps[converged], steps[~converged]], bins=step_bins, stacked=True, color=colours,
              label=labels)
    if config.get("max_steps"):
        left.axvline(config["max_steps"], color=COLOURS["reference"], linestyle="--", linewidth=1,
                     label=f"max_steps = {config['max_steps']}")
    left.set_xlabel("input-gradient steps taken by an image")
    left.set_ylabel("images")
    left.legend(fontsize=8)

    floor = 1e-8  # a loss that rounds to 0 in float32 still gets a bar on the log axis
    clipped = np.clip(loss, floor, None)
    lo, hi = np.log10(clipped.min()), np.log10(clipped.max())
    loss_bins = np.logspace(lo, hi if hi > lo else lo + 1, 31)
    right.hist([clipped[converged], clipped[~converged]], bins=loss_bins, stacked=True,
               color=colours, label=labels)
    right.set_xscale("log")
    threshold = config.get("loss_threshold")
    if threshold:
        right.axvline(threshold, color=COLOURS["reference"], linestyle="--", linewidth=1,
                      label=f"loss threshold = {threshold:g}")
    right.set_xlabel("final cross-entropy toward the target class (nats, log scale)")
    right.set_ylabel("images")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)

    per = ds["converged"].astype(bool)
    total = per.isel(interval=0).size
    counts = (~per).sum([d for d in per.dims if d != "interval"]).values
    lines = ", ".join(f"{float(t):.0%}: {int(c)}" for t, c in zip(ds["interval"].values, counts))
    fig.text(0.01, 0.005, f"unconverged images of {total} per interval: {lines}", fontsize=8,
             va="bottom", wrap=True)
    fig.get_layout_engine().set(rect=(0, 0.05, 1, 0.95))
    fig.suptitle(f"Per-image convergence of the synthesis ({converged.size} images: every "
                 f"interval, seed and P[k, j])\n{run_title(ds)}", fontsize=10)
    return fig


def unconverged_fraction(ds: xr.Dataset) -> np.ndarray:
    """Per interval, the share of grid images whose loss missed the threshold."""
    converged = ds["converged"].astype(bool)
    return 1.0 - converged.mean([d for d in converged.dims if d != "interval"]).values


def converged_pairs(ds: xr.Dataset, name: str) -> np.ndarray:
    """Mask ``(interval, seed, k, j, i)`` of the values of ``C`` (``name="C"``) or ``R`` whose two
    images converged, self-pairs left out."""
    ok = ds["converged"].transpose(*GRID).values.astype(bool)          # (t, s, k, j)
    n = ok.shape[-1]
    if name == "C":   # P[k, j] and P[i, j]: i runs over targets of the same origin j
        both = ok[..., :, :, None] & ok.transpose(0, 1, 3, 2)[:, :, None, :, :]  # (t,s,k,j,i)
        self_pair = np.eye(n, dtype=bool)[:, None, :]                        # i == k
    else:             # P[k, j] and P[k, i]: i runs over origins of the same target k
        both = ok[..., :, :, None] & ok[..., :, None, :]
        self_pair = np.eye(n, dtype=bool)[None, :, :]                        # i == j
    return both & ~self_pair


def converged_mean(ds: xr.Dataset, name: str) -> np.ndarray:
    """Mean of ``name`` (``C`` or ``R``) per interval over the pairs :func:`converged_pairs`
    keeps, pooled over seeds; NaN where none is kept."""
    values = ds[name].transpose(*GRID, "i").values.astype(np.float64)
    mask = converged_pairs(ds, name)
    counts = mask.sum(axis=(1, 2, 3, 4))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.where(mask, values, 0.0).sum(axis=(1, 2, 3, 4)) / counts,
                        np.nan)


def converged_std(ds: xr.Dataset, name: str) -> np.ndarray:
    """Population standard deviation of ``name`` (``C`` or ``R``) per interval over the pairs
    :func:`converged_pairs` keeps, pooled over seeds; NaN where none is kept."""
    values = ds[name].transpose(*GRID, "i").values.astype(np.float64)
    mask = converged_pairs(ds, name)
    mean = converged_mean(ds, name)[:, None, None, None, None]
    counts = mask.sum(axis=(1, 2, 3, 4))
    with np.errstate(invalid="ignore", divide="ignore"):
        squares = np.where(mask, (values - mean) ** 2, 0.0).sum(axis=(1, 2, 3, 4))
        return np.where(counts > 0, np.sqrt(squares / counts), np.nan)


def pair_count(ds: xr.Dataset) -> np.ndarray:
    """How many values the converged-only scores rest on, per interval: the fewer of the counts
    of ``C`` and of ``R`` pairs kept."""
    return np.minimum(converged_pairs(ds, "C").sum(axis=(1, 2, 3, 4)),
                      converged_pairs(ds, "R").sum(axis=(1, 2, 3, 4))).astype(np.float64)


def mean_steps(ds: xr.Dataset) -> np.ndarray:
    """Mean input-gradient steps per grid image, per interval."""
    return ds["steps"].mean([d for d in ds["steps"].dims if d != "interval"]).values.astype(np.float64)


@toolkit.hookimpl
def register_scores(register):
    register("unconverged_fraction", toolkit.Score(
        unconverged_fraction, ("converged",), -1,
        "baseline: a better classifier's grid images reach the loss threshold"))
    needs = ("C", "R", "converged")
    register("C_mean_converged", toolkit.Score(
        lambda ds: converged_mean(ds, "C"), needs, +1,
        "as C_mean, over the pairs whose two images reached the loss threshold"))
    register("R_mean_converged", toolkit.Score(
        lambda ds: converged_mean(ds, "R"), needs, 0, "as R_mean, converged pairs only"))
    register("C_minus_R_converged", toolkit.Score(
        lambda ds: converged_mean(ds, "C") - converged_mean(ds, "R"), needs, +1,
        "pre-registered primary score of the model zoo: C - R over converged pairs"))
    for name in ("C", "R"):
        register(f"{name}_std_converged", toolkit.Score(
            lambda ds, name=name: converged_std(ds, name), needs, 0,
            f"std of {name} over converged pairs (no sign claimed)"))
    register("converged_pairs", toolkit.Score(
        pair_count, needs, 0, "how many values the converged-only scores rest on"))
    register("mean_steps", toolkit.Score(
        mean_steps, ("steps",), -1, "baseline: a better classifier reaches its classes in fewer steps"))
