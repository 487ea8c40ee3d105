"""The built-in figures: C and R over training, the grid images and the synthesis records.

Each is a :class:`toolkit.FigureSpec` registered with ``register_figures``; ``toolkit plot`` and
``toolkit report`` draw them with the machinery of :mod:`toolkit.plotting`, whose helpers they use.
"""
from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

import toolkit
from toolkit.plotting import (COLOURS as BASE_COLOURS, HEATMAP_CMAP, OKABE_ITO, correlation,
                              interval_axis, legend_above, need, new_figure, percent, run_title)
from toolkit_plugins.grids import convergence, grid, prototypes

# C and R keep their colours in every figure.
COLOURS = {**BASE_COLOURS, "C": OKABE_ITO["blue"], "R": OKABE_ITO["vermillion"]}
LABELS = {"C": "C, inter-class (same origin j)", "R": "R, intra-class (same target k)"}
DISSIMILARITY = "dissimilarity, 1 - cos (unitless)"


def seed_band(ax, ds: xr.Dataset, stat: str) -> None:
    """Lines of ``C_<stat>`` and ``R_<stat>`` per interval, each in a band of +-1 std across seeds
    of the per-seed values ``<V>_seed_<stat>``."""
    x = percent(ds)
    for v in ("C", "R"):
        centre = ds[f"{v}_{stat}"].values
        spread = ds[f"{v}_seed_{stat}"].std("seed").values  # population std, like the file's
        ax.fill_between(x, centre - spread, centre + spread, color=COLOURS[v], alpha=0.2, linewidth=0)
        ax.plot(x, centre, color=COLOURS[v], marker="o", label=LABELS[v])
    interval_axis(ax, ds)


def self_pairs_note(ds: xr.Dataset) -> str:
    attr = ds["C_mean"].attrs.get("self_pairs") if "C_mean" in ds else None
    return f"self-pairs {attr}" if attr else ""


def means(ds: xr.Dataset) -> Figure:
    """Figure 1: mean C and mean R against training interval, band +-1 std across seeds."""
    need(ds, ("C_mean", "R_mean", "C_seed_mean", "R_seed_mean"),
         "run analyze with the zscore metric (--metrics cosine,zscore)")
    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    seed_band(ax, ds, "mean")
    ax.set_ylabel(f"mean {DISSIMILARITY}")
    legend_above(ax, f"band: ±1 std across seeds of the per-seed means; {self_pairs_note(ds)}")
    fig.suptitle(f"Mean C and R over training\n{run_title(ds)}", fontsize=11)
    return fig


def spreads(ds: xr.Dataset) -> Figure:
    """Figure 2: the average (over seeds) standard deviation of C and R against interval."""
    need(ds, ("C_std", "R_std", "C_seed_std", "R_seed_std"),
         "run analyze with the zscore metric (--metrics cosine,zscore)")
    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    seed_band(ax, ds, "std")
    ax.set_ylabel(f"std of {DISSIMILARITY}")
    legend_above(ax, f"band: ±1 std across seeds of the per-seed stds; {self_pairs_note(ds)}")
    fig.suptitle(f"Spread of C and R over training (std, averaged over seeds)\n{run_title(ds)}",
                 fontsize=11)
    return fig


def outliers(ds: xr.Dataset) -> Figure:
    """Figure 3: outlier fraction of C and R per interval (bars), with the reference written on."""
    need(ds, ("C_outlier_fraction", "R_outlier_fraction"),
         "run analyze with the zscore metric (--metrics cosine,zscore)")
    attrs = ds["C_outlier_fraction"].attrs
    threshold = float(attrs.get("threshold", 3.0))
    reference = attrs.get("reference", "?")
    fig = new_figure(7.0, 4.6)
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
    ax.set_xticks(x, [f"{v:g}" for v in percent(ds)])
    ax.set_xlabel("training completed (%)")
    ax.set_ylabel("outliers (% of values)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
    ax.grid(True, axis="y", alpha=0.3)
    legend_above(ax)
    note = (f"outlier: |z| > {threshold:g}, z against the {reference!s} reference: "
            f"{attrs.get('reference_definition', '')}; {self_pairs_note(ds)}")
    fig.text(0.01, 0.005, note, fontsize=7, wrap=True, va="bottom")
    fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    fig.suptitle(f"Outlier fraction of C and R per interval\n{run_title(ds)}", fontsize=11)
    return fig


def accuracy(ds: xr.Dataset) -> Figure:
    """Figure 4: test accuracy against interval, above the C/R means on the same x axis."""
    need(ds, ("test_accuracy",), "every results file should hold it; is this one complete?")
    fig = new_figure(6.4, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = percent(ds)
    acc = ds["test_accuracy"].values * 100
    top.plot(x, acc, color=COLOURS["accuracy"], marker="s", label="test accuracy")
    top.set_ylabel("test accuracy (%)")
    interval_axis(top, ds)
    top.set_xlabel("")
    has_means = all(f"{v}_{s}" in ds for v in ("C", "R") for s in ("mean", "seed_mean"))
    if has_means:
        seed_band(bottom, ds, "mean")
        bottom.set_ylabel(f"mean {DISSIMILARITY}")
        legend_above(bottom, "band: ±1 std across seeds of the per-seed means")
        notes = []
        for v in ("C", "R"):
            r = correlation(acc, ds[f"{v}_mean"].values)
            if r is not None:
                notes.append(f"{v} mean: r = {r:+.2f}")
        legend_above(top, "Pearson correlation with accuracy over the intervals: "
                      + (", ".join(notes) if notes else "needs 3 intervals or more"), ncols=1)
    else:
        interval_axis(bottom, ds)
        bottom.set_yticks([])
        bottom.text(0.5, 0.5, "C_mean and R_mean are not in this file\n(run the zscore metric)",
                    ha="center", va="center", transform=bottom.transAxes)
    fig.suptitle(f"Test accuracy beside mean C and R\n{run_title(ds)}", fontsize=11)
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
    need(ds, ("C", "R"), "run analyze with the cosine metric, and without --save dropping them")
    maps = {v: mean_over_i(ds, v) for v in ("C", "R")}
    finite = np.concatenate([m.values[np.isfinite(m.values)] for m in maps.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    t, n = ds.sizes["interval"], ds.sizes["k"]
    fig = new_figure(1.4 + 2.1 * t, 5.0)
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



_FIGURES = (
    ("means", toolkit.FigureSpec(means, "Mean C and R over training",
               "Each point is the mean dissimilarity (1 - cosine of penultimate features) over all "
               "ordered pairs of one interval, averaged over seeds; the band is ±1 standard "
               "deviation of the per-seed means, so a narrow band means the seeds agree. C compares "
               "images that start from the same prototype and were pushed into different classes; "
               "R compares images pushed into the same class from different starts. The poster "
               "expects C to rise as the classifier trains (classes separate) and R to stay lower "
               "and flat.",
               needs=("C_mean", "R_mean", "C_seed_mean", "R_seed_mean"))),
    ("spreads", toolkit.FigureSpec(spreads, "Spread of C and R over training",
               "The standard deviation of C and of R over the ordered pairs of one (interval, seed), "
               "averaged over seeds; the band is ±1 standard deviation of that value across seeds. "
               "In the poster both spreads stay roughly constant, R's below C's.",
               needs=("C_std", "R_std", "C_seed_std", "R_seed_std"))),
    ("outliers", toolkit.FigureSpec(outliers, "Outliers per interval",
               "The share of C and R values whose z-score has magnitude above the threshold, per "
               "interval. What a z-score is measured against (the reference) is written under the "
               "plot: against the values' own mean and standard deviation (pooled or per seed) at "
               "most 1/threshold^2 of them can be outliers (Chebyshev, the dashed line), so bars "
               "far above it would point to another reference.",
               needs=("C_outlier_fraction", "R_outlier_fraction"))),
    ("accuracy", toolkit.FigureSpec(accuracy, "Test accuracy beside C and R",
               "Top: accuracy on the held-out test split at each interval. Bottom: mean C and R "
               "on the same x axis. The data-free numbers are useful when they move with the "
               "accuracy; the correlation over intervals (Pearson r, from only as many points as "
               "there are intervals) is given in the top panel's legend.",
               needs=("test_accuracy",))),
    ("prototypes", toolkit.FigureSpec(prototypes, "How class prototypes train",
               "One row per class, for one seed: the uniform noise every prototype starts from, "
               "then the prototype the model at each interval synthesises from that same noise "
               "(pixels in [0, 1], stored to 1/255). Structure that appears and sharpens across "
               "the row shows what the classifier has learned to call that class.",
               needs=("prototypes",))),
    ("grid", toolkit.FigureSpec(grid, "The intermediary grid P",
               "Cell (k, j) holds P[k, j]: class j's prototype pushed on until the model calls it "
               "class k; the outlined diagonal holds the prototypes themselves. Down a column the "
               "images share an origin (what C compares); along a row they share a target (what R "
               "compares). Crosses mark images that did not reach the loss threshold.",
               needs=("P", "converged"))),
    ("heatmaps", toolkit.FigureSpec(heatmaps, "C and R per class pair",
               "For each interval, C[k, j, i] and R[k, j, i] averaged over i and seeds (self-pairs "
               "left out), as a k x j map; all panels share one colour scale, so colours compare "
               "across intervals. The mean of a panel is the interval's C or R mean. Bright cells "
               "are class pairs whose intermediary prototypes the model tells far apart.",
               needs=("C", "R"))),
    ("convergence", toolkit.FigureSpec(convergence, "Convergence of the synthesis",
               "Every synthesised image (all intervals, seeds and grid cells): left, the number of "
               "input-gradient steps it took; right, its final cross-entropy toward its target "
               "class, on a log axis with the loss threshold dashed. Images that hit max_steps "
               "without reaching the threshold are stacked in orange and counted per interval "
               "below; many of them make C and R less trustworthy at that interval.",
               needs=("steps", "loss", "converged"))),
)


@toolkit.hookimpl
def register_figures(register):
    for name, spec in _FIGURES:
        register(name, spec)


@toolkit.hookimpl
def register_scores(register):
    # The cosine metrics' summaries as data-free scores (here, beside their figures, so that the
    # metrics module keeps to its one hook).
    register("C_mean", toolkit.Score.of_variable(
        "C_mean", +1, "poster: inter-class dissimilarity rises as the classifier trains"))
    register("R_mean", toolkit.Score.of_variable(
        "R_mean", 0, "poster: intra-class dissimilarity stays stable (no sign claimed)"))
    register("C_minus_R", toolkit.Score(
        lambda ds: (ds["C_mean"] - ds["R_mean"]).values.astype(np.float64), ("C_mean", "R_mean"),
        +1, "poster: C rises while R stays low and flat"))
    for name in ("C_std", "R_std", "C_outlier_fraction", "R_outlier_fraction"):
        register(name, toolkit.Score.of_variable(name, 0, "no sign claimed"))
