"""Figures of a results file: one function per figure, each ``Dataset -> matplotlib Figure``.

Every figure is drawn from the file alone (``toolkit.open_results`` or ``xarray.open_dataset``),
on its own ``matplotlib.figure.Figure`` (no pyplot state, no window), in the Okabe-Ito
colour-blind-safe palette, with a title naming model, dataset and seeds. A figure whose variables
a file lacks (a run without the ``zscore`` metric, a file without the grid ``P``) raises
:class:`MissingData`, a :class:`UsageError` that says what is missing and how to get it.

``plot`` draws them all into a folder; ``toolkit.report`` embeds them in one HTML page.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from toolkit.errors import UsageError
from toolkit.files import atomic_write

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour-vision
# deficiency. C and R keep their colours in every figure.
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9",
             "bluish_green": "#009E73", "yellow": "#F0E442", "blue": "#0072B2",
             "vermillion": "#D55E00", "reddish_purple": "#CC79A7"}
COLOURS = {"C": OKABE_ITO["blue"], "R": OKABE_ITO["vermillion"],
           "accuracy": OKABE_ITO["bluish_green"], "unconverged": OKABE_ITO["orange"],
           "highlight": OKABE_ITO["orange"], "reference": OKABE_ITO["black"]}
LABELS = {"C": "C, inter-class (same origin j)", "R": "R, intra-class (same target k)"}
DISSIMILARITY = "dissimilarity, 1 - cos (unitless)"
HEATMAP_CMAP = "viridis"  # perceptually uniform and colour-blind safe
FORMATS = ("png", "pdf", "svg")
MAX_CLASSES = 20  # image grids beyond this many classes show an evenly spaced subset


class MissingData(UsageError):
    """A figure needs variables that this results file does not hold."""


def run_title(ds: xr.Dataset) -> str:
    """``resnet18 on digits, 5 seeds (0-4)``: what every figure's title says about the run."""
    seeds = [int(s) for s in ds["seed"].values] if "seed" in ds.coords else []
    if len(seeds) == 1:
        which = f"seed {seeds[0]}"
    elif seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        which = f"{len(seeds)} seeds ({seeds[0]}-{seeds[-1]})"
    else:
        which = f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"
    return f"{ds.attrs.get('model', '?')} on {ds.attrs.get('dataset', '?')}, {which}"


def _need(ds: xr.Dataset, names: Iterable[str], how: str) -> None:
    missing = [name for name in names if name not in ds.variables]
    if missing:
        raise MissingData(f"this file lacks {', '.join(missing)}; {how}")


def _percent(ds: xr.Dataset) -> np.ndarray:
    return ds["interval"].values * 100


def _interval_axis(ax, ds: xr.Dataset) -> None:
    x = _percent(ds)
    ax.set_xlabel("training completed (%)")
    ax.set_xticks(x, [f"{v:g}" for v in x])
    pad = max(2.0, (x.max() - x.min()) * 0.05)
    ax.set_xlim(x.min() - pad, x.max() + pad)
    ax.grid(True, alpha=0.3)


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _seed_band(ax, ds: xr.Dataset, stat: str) -> None:
    """Lines of ``C_<stat>`` and ``R_<stat>`` per interval, each in a band of +-1 std across seeds
    of the per-seed values ``<V>_seed_<stat>``."""
    x = _percent(ds)
    for v in ("C", "R"):
        centre = ds[f"{v}_{stat}"].values
        spread = ds[f"{v}_seed_{stat}"].std("seed").values  # population std, like the file's
        ax.fill_between(x, centre - spread, centre + spread, color=COLOURS[v], alpha=0.2, linewidth=0)
        ax.plot(x, centre, color=COLOURS[v], marker="o", label=LABELS[v])
    _interval_axis(ax, ds)


def _legend_above(ax, title: str | None = None, ncols: int = 2) -> None:
    """The legend between title and axes, where it can hide no data."""
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncols=ncols, fontsize=8, frameon=False,
              title=title, title_fontsize=8, alignment="left", borderaxespad=0.0)


def _self_pairs_note(ds: xr.Dataset) -> str:
    attr = ds["C_mean"].attrs.get("self_pairs") if "C_mean" in ds else None
    return f"self-pairs {attr}" if attr else ""


def means(ds: xr.Dataset) -> Figure:
    """Figure 1: mean C and mean R against training interval, band +-1 std across seeds."""
    _need(ds, ("C_mean", "R_mean", "C_seed_mean", "R_seed_mean"),
          "run analyze with the zscore metric (--metrics cosine,zscore)")
    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    _seed_band(ax, ds, "mean")
    ax.set_ylabel(f"mean {DISSIMILARITY}")
    _legend_above(ax, f"band: ±1 std across seeds of the per-seed means; {_self_pairs_note(ds)}")
    fig.suptitle(f"Mean C and R over training\n{run_title(ds)}", fontsize=11)
    return fig


def spreads(ds: xr.Dataset) -> Figure:
    """Figure 2: the average (over seeds) standard deviation of C and R against interval."""
    _need(ds, ("C_std", "R_std", "C_seed_std", "R_seed_std"),
          "run analyze with the zscore metric (--metrics cosine,zscore)")
    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    _seed_band(ax, ds, "std")
    ax.set_ylabel(f"std of {DISSIMILARITY}")
    _legend_above(ax, f"band: ±1 std across seeds of the per-seed stds; {_self_pairs_note(ds)}")
    fig.suptitle(f"Spread of C and R over training (std, averaged over seeds)\n{run_title(ds)}",
                 fontsize=11)
    return fig


def outliers(ds: xr.Dataset) -> Figure:
    """Figure 3: outlier fraction of C and R per interval (bars), with the reference written on."""
    _need(ds, ("C_outlier_fraction", "R_outlier_fraction"),
          "run analyze with the zscore metric (--metrics cosine,zscore)")
    attrs = ds["C_outlier_fraction"].attrs
    threshold = float(attrs.get("threshold", 3.0))
    reference = attrs.get("reference", "?")
    fig = _new_figure(7.0, 4.6)
    ax = fig.add_subplot()
    x = np.arange(ds.sizes["interval"])
    width = 0.38
    for offset, v in ((-width / 2, "C"), (width / 2, "R")):
        values = ds[f"{v}_outlier_fraction"].values * 100
        bars = ax.bar(x + offset, np.nan_to_num(values), width, color=COLOURS[v], label=LABELS[v])
        ax.bar_label(bars, labels=["n/a" if np.isnan(p) else f"{p:.1f}" for p in values],
                     fontsize=7, padding=2)
    if reference in ("pooled", "seed"):
        # Chebyshev: at most 1/t^2 of any set of values lie more than t of its own stds from its mean.
        bound = 100 / threshold ** 2
        ax.axhline(bound, color=COLOURS["reference"], linestyle="--", linewidth=1,
                   label=f"Chebyshev bound for this reference ({bound:.1f} %)")
    ax.set_xticks(x, [f"{v:g}" for v in _percent(ds)])
    ax.set_xlabel("training completed (%)")
    ax.set_ylabel("outliers (% of values)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
    ax.grid(True, axis="y", alpha=0.3)
    _legend_above(ax)
    note = (f"outlier: |z| > {threshold:g}, z against the {reference!s} reference: "
            f"{attrs.get('reference_definition', '')}; {_self_pairs_note(ds)}")
    fig.text(0.01, 0.005, note, fontsize=7, wrap=True, va="bottom")
    fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    fig.suptitle(f"Outlier fraction of C and R per interval\n{run_title(ds)}", fontsize=11)
    return fig


def accuracy(ds: xr.Dataset) -> Figure:
    """Figure 4: test accuracy against interval, above the C/R means on the same x axis."""
    _need(ds, ("test_accuracy",), "every results file should hold it; is this one complete?")
    fig = _new_figure(6.4, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = _percent(ds)
    acc = ds["test_accuracy"].values * 100
    top.plot(x, acc, color=COLOURS["accuracy"], marker="s", label="test accuracy")
    top.set_ylabel("test accuracy (%)")
    _interval_axis(top, ds)
    top.set_xlabel("")
    has_means = all(f"{v}_{s}" in ds for v in ("C", "R") for s in ("mean", "seed_mean"))
    if has_means:
        _seed_band(bottom, ds, "mean")
        bottom.set_ylabel(f"mean {DISSIMILARITY}")
        _legend_above(bottom, "band: ±1 std across seeds of the per-seed means")
        notes = []
        for v in ("C", "R"):
            r = _correlation(acc, ds[f"{v}_mean"].values)
            if r is not None:
                notes.append(f"{v} mean: r = {r:+.2f}")
        _legend_above(top, "Pearson correlation with accuracy over the intervals: "
                      + (", ".join(notes) if notes else "needs 3 intervals or more"), ncols=1)
    else:
        _interval_axis(bottom, ds)
        bottom.set_yticks([])
        bottom.text(0.5, 0.5, "C_mean and R_mean are not in this file\n(run the zscore metric)",
                    ha="center", va="center", transform=bottom.transAxes)
    fig.suptitle(f"Test accuracy beside mean C and R\n{run_title(ds)}", fontsize=11)
    return fig


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return None
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _pick_seed(ds: xr.Dataset, seed: int | None) -> int:
    seeds = [int(s) for s in ds["seed"].values]
    if seed is None:
        return seeds[0]
    if int(seed) not in seeds:
        raise UsageError(f"seed {seed} is not in this file; it holds seeds {', '.join(map(str, seeds))}")
    return int(seed)


def _pick_interval(ds: xr.Dataset, interval: float | None) -> float:
    values = [float(t) for t in ds["interval"].values]
    if interval is None:
        return values[-1]
    close = [t for t in values if abs(t - float(interval)) < 1e-9]
    if not close:
        raise UsageError(f"interval {interval:g} is not in this file; it holds "
                         + ", ".join(f"{t:g}" for t in values))
    return close[0]


def _pick_classes(ds: xr.Dataset, classes: Sequence[int | str] | None,
                  max_classes: int = MAX_CLASSES) -> np.ndarray:
    """Class indices to show: those asked for (indices or names), else all, else an evenly spaced
    subset of ``max_classes``."""
    names = [str(c) for c in ds["class_name"].values]
    n = len(names)
    if classes is None:
        if n <= max_classes:
            return np.arange(n)
        return np.unique(np.linspace(0, n - 1, max_classes).round().astype(int))
    picked = []
    for c in classes:
        if isinstance(c, str) and c in names:
            picked.append(names.index(c))
        elif not isinstance(c, bool) and str(c).lstrip("-").isdigit() and 0 <= int(c) < n:
            picked.append(int(c))
        else:
            raise UsageError(f"class {c!r} is not in this file; give indices 0-{n - 1} or names "
                             f"like {', '.join(names[:3])}")
    return np.asarray(picked)


def _subset_note(shown: np.ndarray, n: int) -> str:
    return "" if len(shown) == n else f", {len(shown)} of {n} classes shown"


def mosaic(tiles: np.ndarray, pad: int | None = None, fill: float = 1.0) -> np.ndarray:
    """One image from ``tiles`` ``(rows, cols, channel, y, x)``, separated by ``pad`` pixels of
    ``fill``: ``(H, W)`` for one channel, ``(H, W, 3)`` for three; others show their mean."""
    rows, cols, channels, h, w = tiles.shape
    if channels not in (1, 3):
        tiles, channels = tiles.mean(2, keepdims=True), 1
    pad = max(1, h // 10) if pad is None else pad
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, channels), fill, np.float32)
    for r in range(rows):
        for c in range(cols):
            out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = \
                np.moveaxis(tiles[r, c], 0, -1)
    return out[..., 0] if channels == 1 else out


def _tile_centres(count: int, size: int, pad: int) -> np.ndarray:
    return np.arange(count) * (size + pad) + (size - 1) / 2


def _show_mosaic(ax, tiles: np.ndarray) -> int:
    pad = max(1, tiles.shape[-2] // 10)
    image = mosaic(tiles, pad)
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1,
              interpolation="nearest")
    for side in ax.spines.values():
        side.set_visible(False)
    ax.tick_params(length=0)
    return pad


def prototypes(ds: xr.Dataset, seed: int | None = None,
               classes: Sequence[int | str] | None = None) -> Figure:
    """Figure 5: how class prototypes train: the starting noise, then each interval's prototype,
    one row per class, for one seed."""
    _need(ds, ("prototypes",), "files written by analyze since toolkit 0.1 store them; rerun analyze")
    seed = _pick_seed(ds, seed)
    shown = _pick_classes(ds, classes)
    protos = ds["prototypes"].sel(seed=seed).isel({"class": shown}).transpose("class", "interval", ...)
    columns = [f"{t:g}%" for t in _percent(ds)]
    tiles = protos.values
    if "noise" in ds:
        tiles = np.concatenate([ds["noise"].sel(seed=seed).isel({"class": shown}).values[:, None],
                                tiles], axis=1)
        columns = ["start\n(noise)"] + columns
    rows, cols = tiles.shape[:2]
    cell = 0.75 if rows <= 10 else 0.45
    fig = _new_figure(max(4.8, 2.0 + cols * cell), 1.7 + rows * cell)
    ax = fig.add_subplot()
    pad = _show_mosaic(ax, tiles)
    h, w = tiles.shape[-2:]
    names = [str(n) for n in ds["class_name"].values[shown]]
    ax.set_yticks(_tile_centres(rows, h, pad), names, fontsize=8)
    ax.set_xticks(_tile_centres(cols, w, pad), columns, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_ylabel("class")
    ax.set_xlabel("training completed", labelpad=6)
    ax.xaxis.set_label_position("top")
    missing = "" if "noise" in ds else "; starting noise not in this file"
    fig.suptitle(f"How class prototypes train, seed {seed}{_subset_note(shown, ds.sizes['class'])}"
                 f"{missing}\n{run_title(ds)}", fontsize=10)
    return fig


def _cells(ds: xr.Dataset, name: str, at: dict, shown) -> np.ndarray:
    """Variable ``name`` of a (k, j) grid at one interval and seed, for the classes ``shown``,
    as an array ``(k, j, ...)``."""
    return ds[name].sel(at).isel(k=shown, j=shown).transpose("k", "j", ...).values


def grid(ds: xr.Dataset, interval: float | None = None, seed: int | None = None,
         classes: Sequence[int | str] | None = None) -> Figure:
    """Figure 6: the intermediary grid ``P`` for one interval and seed: row k (target class),
    column j (origin class); the diagonal holds the class prototypes. Unconverged images are
    crossed out. For more than ``MAX_CLASSES`` classes, an evenly spaced subset."""
    _need(ds, ("P",), "rerun analyze with --save_images (on by default for up to 20 classes)")
    interval = _pick_interval(ds, interval)
    seed = _pick_seed(ds, seed)
    shown = _pick_classes(ds, classes)
    at = dict(interval=interval, seed=seed)
    tiles = _cells(ds, "P", at, shown)
    n = len(shown)
    cell = 0.6 if n <= 10 else 0.42
    fig = _new_figure(2.2 + n * cell, 1.9 + n * cell)
    ax = fig.add_subplot()
    pad = _show_mosaic(ax, tiles)
    h, w = tiles.shape[-2:]
    names = [str(c) for c in ds["class_name"].values[shown]]
    fontsize = 8 if n <= 12 else 6
    ax.set_yticks(_tile_centres(n, h, pad), names, fontsize=fontsize)
    ax.set_xticks(_tile_centres(n, w, pad), names, fontsize=fontsize,
                  rotation=90 if max(map(len, names)) > 3 else 0)
    ax.set_ylabel("target class k (pushed into)")
    ax.set_xlabel("origin class j (started from its prototype)")
    for d in range(n):  # on the tile's own edge, so it neither hides a neighbour nor is clipped
        ax.add_patch(Rectangle((d * (w + pad) - 0.5, d * (h + pad) - 0.5), w, h, fill=False,
                               edgecolor=COLOURS["highlight"], linewidth=1.5, clip_on=False))
    converged = _cells(ds, "converged", at, shown)
    rows, cols = np.nonzero(~converged.astype(bool))
    limits = ax.get_xlim(), ax.get_ylim()
    ax.scatter(_tile_centres(n, w, pad)[cols], _tile_centres(n, h, pad)[rows], marker="x",
               s=40, color=COLOURS["unconverged"], linewidths=1.5)
    ax.set(xlim=limits[0], ylim=limits[1])  # the marks must not widen the view beyond the images
    fig.suptitle(f"Intermediary prototypes P[k, j] at {interval:.0%} of training, seed {seed}"
                 f"{_subset_note(shown, ds.sizes['k'])}\n{run_title(ds)}\noutlined: class "
                 f"prototypes (diagonal); x: not converged ({len(rows)} of {n * n})", fontsize=10)
    return fig


def mean_over_i(ds: xr.Dataset, name: str) -> xr.DataArray:
    """``C`` or ``R`` averaged over ``i`` and seeds, self-pairs (0 by construction) left out:
    ``(interval, k, j)``. Its mean over ``(k, j)`` is the file's ``<name>_mean`` (self-pairs excluded)."""
    values = ds[name].astype(np.float64)
    self_dim = "k" if name == "C" else "j"
    return values.where(values["i"] != values[self_dim]).mean(("seed", "i"))


def heatmaps(ds: xr.Dataset) -> Figure:
    """Figure 7: C and R averaged over i (and seeds) as k x j heatmaps, one per interval, on one
    shared colour scale."""
    _need(ds, ("C", "R"), "run analyze with the cosine metric, and without --save dropping them")
    maps = {v: mean_over_i(ds, v) for v in ("C", "R")}
    finite = np.concatenate([m.values[np.isfinite(m.values)] for m in maps.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    t, n = ds.sizes["interval"], ds.sizes["k"]
    fig = _new_figure(1.4 + 2.1 * t, 5.0)
    axes = fig.subplots(2, t, squeeze=False, sharex=True, sharey=True)
    names = [str(c) for c in ds["class_name"].values]
    image = None
    for row, v in enumerate(("C", "R")):
        for col in range(t):
            ax = axes[row, col]
            image = ax.imshow(maps[v].isel(interval=col).transpose("k", "j").values, cmap=HEATMAP_CMAP,
                              vmin=vmin, vmax=vmax, interpolation="nearest")
            if n <= 12:  # class names; beyond that, matplotlib's round class indices
                ax.set_xticks(np.arange(n), names, rotation=90 if n > 5 else 0)
                ax.set_yticks(np.arange(n), names)
            ax.tick_params(labelsize=6)
            if row == 0:
                ax.set_title(f"{float(ds['interval'][col]):.0%} trained", fontsize=9)
            if row == 1:
                ax.set_xlabel("origin class j", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"{v}: target class k", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.85, label=f"mean over i of {DISSIMILARITY}")
    fig.suptitle(f"C (top) and R (bottom) averaged over i and seeds, self-pairs excluded\n"
                 f"{run_title(ds)}", fontsize=10)
    return fig


def convergence(ds: xr.Dataset) -> Figure:
    """Figure 8: per-image convergence: histograms of steps and of final loss, converged and not
    stacked, with the unconverged images counted per interval."""
    _need(ds, ("steps", "loss", "converged"), "every results file should hold them")
    config = json.loads(ds.attrs.get("config", "{}"))
    converged = ds["converged"].values.astype(bool).ravel()
    steps = ds["steps"].values.ravel().astype(float)
    loss = ds["loss"].values.ravel().astype(float)
    fig = _new_figure(10.0, 4.6)
    left, right = fig.subplots(1, 2)
    colours = [COLOURS["C"], COLOURS["unconverged"]]
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


def boundary(ds: xr.Dataset, interval: float | None = None, seed: int | None = None,
             classes: Sequence[int | str] | None = None) -> Figure:
    """The boundary grid ``B`` (synthesizer ``boundary``) at one interval and seed, beside the
    mean dissimilarity of boundary images (``BC``, ``BR``) and of ``C``, ``R`` against interval."""
    _need(ds, ("B", "boundary_success"), "run analyze with --synthesizer boundary (and --save_images)")
    interval = _pick_interval(ds, interval)
    seed = _pick_seed(ds, seed)
    shown = _pick_classes(ds, classes)
    at = dict(interval=interval, seed=seed)
    tiles = _cells(ds, "B", at, shown)
    n = len(shown)
    fig = _new_figure(6.4 + n * 0.5, 1.9 + max(n * 0.5, 3.0))
    left, right = fig.subplots(1, 2, width_ratios=[max(n * 0.5, 2.5), 4.0])
    pad = _show_mosaic(left, tiles)
    h, w = tiles.shape[-2:]
    names = [str(c) for c in ds["class_name"].values[shown]]
    left.set_yticks(_tile_centres(n, h, pad), names, fontsize=7)
    left.set_xticks(_tile_centres(n, w, pad), names, fontsize=7)
    left.set_ylabel("class k")
    left.set_xlabel("origin class j (from p_j towards P[k, j])")
    success = _cells(ds, "boundary_success", at, shown)
    off = ~np.eye(n, dtype=bool)
    rows, cols = np.nonzero(off & ~success.astype(bool))
    limits = left.get_xlim(), left.get_ylim()
    left.scatter(_tile_centres(n, w, pad)[cols], _tile_centres(n, h, pad)[rows], marker="x", s=30,
                 color=COLOURS["unconverged"], linewidths=1.2)
    left.set(xlim=limits[0], ylim=limits[1])
    left.set_title(f"B[k, j], {interval:.0%}, seed {seed}\nx: off the boundary "
                   f"({len(rows)} of {int(off.sum())})", fontsize=8)
    x = _percent(ds)
    styles = {"C": ("C", "-"), "R": ("R", "-"), "BC": ("C", "--"), "BR": ("R", "--")}
    for v, (colour, line) in styles.items():
        if f"{v}_mean" in ds:
            right.plot(x, ds[f"{v}_mean"].values, color=COLOURS[colour], linestyle=line, marker="o",
                       markersize=3, label=f"{v} mean")
    # success rate over the off-diagonal cells of every seed
    rate = ds["boundary_success"].where(ds["k"] != ds["j"]).mean(("seed", "k", "j")).values
    _interval_axis(right, ds)
    right.set_ylabel(f"mean {DISSIMILARITY}")
    right.set_title("on the boundary: " + ", ".join(f"{t:g}%: {r:.0%}" for t, r in zip(x, rate)),
                    fontsize=7, wrap=True)
    right.legend(fontsize=7, frameon=False)
    fig.suptitle(f"Boundary prototypes B and their dissimilarity (dashed) beside C and R\n"
                 f"{run_title(ds)}", fontsize=10)
    return fig


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """A figure: its drawing function, a heading, and how a reader reads it. An ``optional``
    figure shows what an optional plugin adds: drawn when the file has its data, and skipped
    without a word when it has not, unless asked for by name."""

    name: str
    draw: Callable[..., Figure]
    heading: str
    how_to_read: str
    optional: bool = False


FIGURES = {spec.name: spec for spec in (
    FigureSpec("means", means, "Mean C and R over training",
               "Each point is the mean dissimilarity (1 - cosine of penultimate features) over all "
               "ordered pairs of one interval, averaged over seeds; the band is ±1 standard "
               "deviation of the per-seed means, so a narrow band means the seeds agree. C compares "
               "images that start from the same prototype and were pushed into different classes; "
               "R compares images pushed into the same class from different starts. The poster "
               "expects C to rise as the classifier trains (classes separate) and R to stay lower "
               "and flat."),
    FigureSpec("spreads", spreads, "Spread of C and R over training",
               "The standard deviation of C and of R over the ordered pairs of one (interval, seed), "
               "averaged over seeds; the band is ±1 standard deviation of that value across seeds. "
               "In the poster both spreads stay roughly constant, R's below C's."),
    FigureSpec("outliers", outliers, "Outliers per interval",
               "The share of C and R values whose z-score has magnitude above the threshold, per "
               "interval. What a z-score is measured against (the reference) is written under the "
               "plot: against the values' own mean and standard deviation (pooled or per seed) at "
               "most 1/threshold^2 of them can be outliers (Chebyshev, the dashed line), so bars "
               "far above it would point to another reference."),
    FigureSpec("accuracy", accuracy, "Test accuracy beside C and R",
               "Top: accuracy on the held-out test split at each interval. Bottom: mean C and R "
               "on the same x axis. The data-free numbers are useful when they move with the "
               "accuracy; the correlation over intervals (Pearson r, from only as many points as "
               "there are intervals) is given in the top panel's legend."),
    FigureSpec("prototypes", prototypes, "How class prototypes train",
               "One row per class, for one seed: the uniform noise every prototype starts from, "
               "then the prototype the model at each interval synthesises from that same noise "
               "(pixels in [0, 1], stored to 1/255). Structure that appears and sharpens across "
               "the row shows what the classifier has learned to call that class."),
    FigureSpec("grid", grid, "The intermediary grid P",
               "Cell (k, j) holds P[k, j]: class j's prototype pushed on until the model calls it "
               "class k; the outlined diagonal holds the prototypes themselves. Down a column the "
               "images share an origin (what C compares); along a row they share a target (what R "
               "compares). Crosses mark images that did not reach the loss threshold."),
    FigureSpec("heatmaps", heatmaps, "C and R per class pair",
               "For each interval, C[k, j, i] and R[k, j, i] averaged over i and seeds (self-pairs "
               "left out), as a k x j map; all panels share one colour scale, so colours compare "
               "across intervals. The mean of a panel is the interval's C or R mean. Bright cells "
               "are class pairs whose intermediary prototypes the model tells far apart."),
    FigureSpec("convergence", convergence, "Convergence of the synthesis",
               "Every synthesised image (all intervals, seeds and grid cells): left, the number of "
               "input-gradient steps it took; right, its final cross-entropy toward its target "
               "class, on a log axis with the loss threshold dashed. Images that hit max_steps "
               "without reaching the threshold are stacked in orange and counted per interval "
               "below; many of them make C and R less trustworthy at that interval."),
    FigureSpec("boundary", boundary, "Boundary prototypes B",
               "Left: cell (k, j) holds B[k, j], an image on the decision boundary of classes j "
               "and k (the model's top two classes, their probabilities within the tolerance), "
               "found between p_j and P[k, j]; crosses mark pairs where none was found. Right: "
               "the mean dissimilarity of boundary images, BC (same origin) and BR (same target), "
               "dashed, beside C and R, against training; the rate of pairs on the boundary is "
               "in the title.", optional=True),
)}


def render(ds: xr.Dataset, name: str, **options: Any) -> Figure:
    """Draw figure ``name`` of ``ds``; options a figure does not take are ignored
    (``seed`` and ``classes`` go to prototypes and grid, ``interval`` to grid)."""
    spec = FIGURES[name]
    accepted = inspect.signature(spec.draw).parameters
    return spec.draw(ds, **{k: v for k, v in options.items() if k in accepted and v is not None})


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """``"png,pdf"`` or ``("png", "pdf")`` -> a tuple of known formats; ``UsageError`` otherwise."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen = tuple(dict.fromkeys(str(f).strip().lower().lstrip(".") for f in items if str(f).strip()))
    unknown = [f for f in chosen if f not in FORMATS]
    if not chosen or unknown:
        raise UsageError(f"unknown --format {', '.join(unknown) or repr(formats)}; "
                         f"allowed: {', '.join(FORMATS)} (comma-separated)")
    return chosen


def parse_figures(figures: str | Sequence[str] | None) -> tuple[str, ...]:
    if figures is None:
        return tuple(FIGURES)
    items = figures.split(",") if isinstance(figures, str) else list(figures)
    chosen = tuple(dict.fromkeys(str(f).strip() for f in items if str(f).strip()))
    unknown = [f for f in chosen if f not in FIGURES]
    if not chosen or unknown:
        raise UsageError(f"unknown figure {', '.join(unknown) or repr(figures)}; "
                         f"allowed: {', '.join(FIGURES)}")
    return chosen


def default_folder(results: str | os.PathLike) -> Path:
    """``run.nc`` -> ``run.figures/``, beside the results file."""
    return Path(results).with_suffix(".figures")


def check_folder(out: str | os.PathLike, formats: Sequence[str] = ("png",),
                 figures: Sequence[str] | None = None, overwrite: bool = False) -> None:
    """``UsageError`` unless the figures could be written into ``out`` without replacing a file
    (unless ``overwrite``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"figure folder {str(out)!r} is a file; choose a folder with --out")
    if not out.parent.is_dir():
        raise UsageError(f"folder {str(out.parent)!r} of the figure folder does not exist")
    if out.is_dir() and not overwrite:
        clash = [f"{name}.{fmt}" for name in (figures or FIGURES) for fmt in formats
                 if (out / f"{name}.{fmt}").exists()]
        if clash:
            raise UsageError(f"{out} already holds figures ({', '.join(clash[:3])}"
                             f"{', ...' if len(clash) > 3 else ''}); pass --overwrite to replace "
                             "them, or choose another --out")


def as_dataset(results: xr.Dataset | str | os.PathLike) -> tuple[xr.Dataset, Path | None]:
    """A validated results Dataset and the path it came from (None for a Dataset)."""
    from toolkit.results import open_results, validate

    if isinstance(results, xr.Dataset):
        return validate(results), None
    return open_results(results), Path(results)


def plot(results: xr.Dataset | str | os.PathLike, out: str | os.PathLike | None = None,
         formats: str | Sequence[str] = ("png",), figures: str | Sequence[str] | None = None, *,
         overwrite: bool = False, dpi: int = 150, seed: int | None = None,
         interval: float | None = None, classes: Sequence[int | str] | None = None,
         on_skip: Callable[[str, str], None] | None = None) -> list[Path]:
    """Draw the figures of a results file (or Dataset) into a folder; return the files written.

    Args:
        results: a results file (``.nc``) or Dataset.
        out: folder for the figures; default beside the file: ``run.nc`` -> ``run.figures/``.
        formats: file formats, any of ``FORMATS`` (``"png,pdf"`` or a sequence).
        figures: which of ``FIGURES`` to draw (default all).
        overwrite: replace figures already in ``out``; without it, nothing is written if any is there.
        dpi: resolution of raster formats.
        seed, interval, classes: which seed, interval and classes the image figures show
            (default: the first seed, the last interval, all classes up to ``MAX_CLASSES``).
        on_skip: called with (figure name, reason) for a figure this file lacks the data for;
            default: a warning.

    Raises:
        UsageError: a missing or foreign file, an unknown format or figure, a seed or interval
            not in the file, figures already in ``out``.
    """
    formats, names = parse_formats(formats), parse_figures(figures)
    ds, path = as_dataset(results)
    try:
        if out is None:
            if path is None:
                raise UsageError("give out= (a folder) to plot a Dataset that has no file")
            out = default_folder(path)
        out = Path(out)
        check_folder(out, formats, names, overwrite)
        # Bad choices fail before anything is drawn or written.
        if seed is not None:
            _pick_seed(ds, seed)
        if interval is not None:
            _pick_interval(ds, interval)
        if classes is not None:
            _pick_classes(ds, classes)
        options = dict(seed=seed, interval=interval, classes=classes)
        out.mkdir(exist_ok=True)
        written = []
        for name in names:
            try:
                fig = render(ds, name, **options)
            except MissingData as missing:
                if not (figures is None and FIGURES[name].optional):
                    (on_skip or _warn_skip)(name, str(missing))
                continue
            for fmt in formats:
                written.append(_save(fig, out / f"{name}.{fmt}", dpi))
        return written
    finally:
        if path is not None:
            ds.close()


def _warn_skip(name: str, reason: str) -> None:
    warnings.warn(f"figure {name!r} skipped: {reason}", stacklevel=3)


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    """Save atomically, so an interrupted run leaves no half-written figure."""
    kind = path.suffix[1:]
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=kind,
                                                      metadata=_metadata(kind)))


def _metadata(fmt: str) -> dict[str, Any] | None:
    # No creation dates in the files, so the same results give the same figure bytes.
    return {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(fmt)


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (for embedding in a page)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
