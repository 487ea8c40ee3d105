"""Every number and figure of this study's README, from its results files.

``report(folder, here)`` reads ``<folder>/<arm>.nc`` for each arm that exists, writes
``summary.json`` and ``tables.md`` (the README's tables) and the figures into ``here``, and the HTML
report into ``<folder>/report.html``. Nothing here computes C, R or z-scores itself: the outlier
definitions are the toolkit's ``zscore`` metric under each of its references.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import xarray as xr

import toolkit
from toolkit_plugins.metrics import REFERENCES, SELF_PAIRS, zscore

# The poster's outlier table, CIFAR-10 column (per cent, at 25 % ... 100 % trained).
POSTER_OUTLIERS = (36.92, 41.008, 40.2, 42.36, 40.6, 37.24, 25.0)


def outlier_definitions(ds: xr.Dataset) -> dict[str, list[float]]:
    """Outlier % per interval under every reference x self-pair handling, for C, R and both."""
    found = {}
    for reference in REFERENCES:
        for self_pairs in SELF_PAIRS:
            z = zscore(ds, reference=reference, self_pairs=self_pairs)
            tag = f"reference={reference}, self_pairs={self_pairs}"
            c, r = (100 * z[f"{v}_outlier_fraction"].values for v in ("C", "R"))
            found[f"C, {tag}"] = c.tolist()
            found[f"R, {tag}"] = r.tolist()
            found[f"C and R averaged, {tag}"] = ((c + r) / 2).tolist()  # equal counts of each
    return found


POSTER_INTERVALS = (0.25, 0.40, 0.60, 0.70, 0.80, 0.90, 1.00)


def rms(values, intervals=POSTER_INTERVALS) -> float:
    """RMS distance in percentage points from the poster's column, over the intervals both have."""
    poster = dict(zip(POSTER_INTERVALS, POSTER_OUTLIERS))
    gaps = [v - poster[round(t, 6)] for v, t in zip(values, intervals) if round(t, 6) in poster]
    return math.sqrt(np.nanmean(np.square(gaps))) if gaps else math.nan


def convergence(ds: xr.Dataset) -> dict[str, list[float]]:
    """Per interval: mean steps and converged fraction, of all images, prototypes, intermediaries."""
    diagonal = xr.DataArray(np.eye(ds.sizes["k"], dtype=bool), dims=("k", "j"))
    pairs = ("seed", "k", "j")
    steps, converged = ds["steps"], ds["converged"].astype(float)
    return {
        "steps_mean": steps.mean(pairs).values.tolist(),
        "steps_mean_prototypes": steps.where(diagonal).mean(pairs).values.tolist(),
        "steps_mean_intermediaries": steps.where(~diagonal).mean(pairs).values.tolist(),
        "converged": converged.mean(pairs).values.tolist(),
        "converged_prototypes": converged.where(diagonal).mean(pairs).values.tolist(),
        "converged_intermediaries": converged.where(~diagonal).mean(pairs).values.tolist(),
        "loss_median": ds["loss"].median(pairs).values.tolist(),
    }


def summarise(ds: xr.Dataset) -> dict:
    definitions = outlier_definitions(ds)
    intervals = ds["interval"].values.tolist()
    distance = {name: rms(values, intervals) for name, values in definitions.items()}
    ranked = sorted(definitions, key=lambda name: (math.isnan(distance[name]), distance[name]))
    seed_means = {v: ds[f"{v}_seed_mean"] for v in ("C", "R")}
    return {
        "intervals": ds["interval"].values.tolist(),
        "config": json.loads(ds.attrs["config"]),
        "test_accuracy": ds["test_accuracy"].values.tolist(),
        **{f"{v}_{s}": ds[f"{v}_{s}"].values.tolist() for v in ("C", "R") for s in ("mean", "std")},
        **{f"{v}_mean_seed_spread": seed_means[v].std("seed").values.tolist() for v in ("C", "R")},
        "std_R_below_std_C": (ds["R_std"] < ds["C_std"]).values.tolist(),
        "R_below_C": (ds["R_mean"] < ds["C_mean"]).values.tolist(),
        "Mg": ds["Mg"].values.tolist() if "Mg" in ds else None,
        "outliers_default": {v: (100 * ds[f"{v}_outlier_fraction"]).values.tolist() for v in ("C", "R")},
        "outlier_definitions": definitions,
        "closest_to_poster": [{"definition": name, "rms_points": distance[name],
                               "values": definitions[name]} for name in ranked[:3]],
        "convergence": convergence(ds),
        "speed": {k: np.asarray(v).item() for k, v in ds.attrs.items()
                  if k.startswith(("time_", "image_steps"))},
    }


def _row(label, values, digits=3, percent=False):
    cells = [f"{100 * v:.1f}" if percent else f"{v:.{digits}f}" for v in values]
    return f"| {label} | " + " | ".join(cells) + " |"


def tables(name: str, summary: dict) -> str:
    head = "| | " + " | ".join(f"{t:.0%}" for t in summary["intervals"]) + " |\n"
    head += "|---" * (len(summary["intervals"]) + 1) + "|\n"
    lines = [f"### Arm `{name}`", "", head.rstrip("\n")]
    lines.append(_row("test accuracy (%)", summary["test_accuracy"], percent=True))
    for v in ("C", "R"):
        lines.append(_row(f"mean {v}", summary[f"{v}_mean"]))
    for v in ("C", "R"):
        lines.append(_row(f"std {v}", summary[f"{v}_std"]))
    for v in ("C", "R"):
        lines.append(_row(f"outliers {v} (%), pooled", summary["outliers_default"][v], digits=2))
    best = summary["closest_to_poster"][0]
    lines.append(_row(f"outliers (%), closest: {best['definition']}", best["values"], digits=1))
    poster = dict(zip(POSTER_INTERVALS, POSTER_OUTLIERS))
    lines.append(_row("poster CIFAR-10 outliers (%)",
                      [poster.get(round(t, 6), math.nan) for t in summary["intervals"]], digits=2))
    conv = summary["convergence"]
    lines.append(_row("mean steps per image", conv["steps_mean"], digits=1))
    lines.append(_row("converged (%)", conv["converged"], percent=True))
    lines.append(_row("converged prototypes (%)", conv["converged_prototypes"], percent=True))
    lines.append(_row("median final loss", conv["loss_median"], digits=2))
    if summary["Mg"] is not None:
        lines.append(_row("Mg", summary["Mg"]))
    lines += ["", "Outlier definitions nearest the poster's column (RMS distance, percentage points):", ""]
    lines += [f"- {c['definition']}: {c['rms_points']:.1f}" for c in summary["closest_to_poster"]]
    return "\n".join(lines) + "\n"


ARMS = ("step0.01", "step0.1", "fixed250")
STYLE = {"step0.01": dict(color="tab:blue", marker="o"), "step0.1": dict(color="tab:orange", marker="s"),
         "fixed250": dict(color="tab:green", marker="D")}


def comparison_figure(summaries: dict, path: Path) -> Path:
    """The poster's claims beside this run: accuracy, mean C and R, their spreads, outliers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), constrained_layout=True)
    percent = np.asarray([25, 40, 60, 70, 80, 90, 100])
    for arm, summary in summaries.items():
        x = 100 * np.asarray(summary["intervals"])
        style = STYLE.get(arm, {})
        axes[0].plot(x, 100 * np.asarray(summary["test_accuracy"]), label=arm, **style)
        for ax, stat in ((axes[1], "mean"), (axes[2], "std")):
            ax.plot(x, summary[f"C_{stat}"], label=f"C, {arm}", **style)
            ax.plot(x, summary[f"R_{stat}"], label=f"R, {arm}", linestyle="--", mfc="white", **style)
        for variable, line in (("C", "-"), ("R", "--")):
            axes[3].plot(x, summary["outliers_default"][variable], linestyle=line,
                         label=f"{variable}, pooled (default), {arm}", **style)
        best = summary["closest_to_poster"][0]
        short = best["definition"].replace("reference=", "").replace("self_pairs=", "")
        axes[3].plot(x, best["values"], linestyle=":", mfc="white", label=f"closest: {short}, {arm}",
                     **style)
    axes[3].plot(percent, POSTER_OUTLIERS, color="black", marker="*", markersize=10, label="poster, CIFAR-10")
    axes[3].axhline(100 / 9, color="grey", linewidth=0.8)
    axes[3].annotate("Chebyshev bound 11.1 % (own mean and std)", (25, 100 / 9), (0, 4),
                     textcoords="offset points", fontsize=8, color="grey")
    titles = ("Test accuracy (%)", "Mean dissimilarity (C solid, R dashed)",
              "Std of dissimilarity (C solid, R dashed)", "Outliers, |z| > 3 (%)")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("% of the training data (interval)")
        ax.set_xticks(percent)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("CIFAR-10 (JPEG subset), CIFAR-stem ResNet18, 5 seeds: this run beside the poster",
                 fontsize=12)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(folder: str | Path, here: str | Path) -> dict:
    folder, here = Path(folder), Path(here)
    summaries, text, opened = {}, [], []
    for arm in ARMS:
        path = folder / f"{arm}.nc"
        if not path.is_file():
            continue
        ds = toolkit.open_results(path)
        opened.append(ds)
        summaries[arm] = summarise(ds)
        text.append(tables(arm, summaries[arm]))
        toolkit.plot(ds, here / f"figures-{arm}", figures="means,spreads,outliers,accuracy,convergence,grid",
                     overwrite=True, dpi=110)
    if not summaries:
        raise toolkit.UsageError(f"no results in {folder}: run the analyze stage first")
    comparison_figure(summaries, here / "comparison.png")
    (here / "summary.json").write_text(json.dumps(summaries, indent=1) + "\n")
    (here / "tables.md").write_text("\n".join(text))
    toolkit.report(opened, folder / "report.html", overwrite=True)
    print("\n".join(text))
    return summaries
