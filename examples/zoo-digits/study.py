"""The digits zoo's study of record: rank the 48 models, then the pre-registered analysis.

    python examples/zoo-digits/study.py run                 # every arm, into results/ (resumable)
    python examples/zoo-digits/study.py run --arms main     # one arm
    python examples/zoo-digits/study.py partial --arms max_steps_1000   # the models it finished
    python examples/zoo-digits/study.py analyze             # summary.json, figures/, README tables
    python examples/zoo-digits/study.py replication         # README block of replication/ only

``run`` calls ``toolkit.rank`` on every model of ``weights/zoo.json`` (built by ``build.py``), once
per arm (:data:`ARMS`), each into ``results/<arm>.nc`` (kept out of git; a killed run resumes).
``analyze`` follows PREREGISTRATION.md to the letter: Kendall's tau-b and Spearman's rho of every
score with test accuracy, each score oriented by its pre-set direction (a model without a value
ranked below every model with one), 95 % percentile bootstrap intervals over models (10,000
resamples, seed 0, the same resamples for every score, so differences are paired), the primary
score against the best baseline, the top cluster and each architecture. It writes
``summary.json`` (committed: every number below comes from it), ``figures/*.png`` and the block of
README.md between the ``results`` markers; ``tests/e2e/test_zoo_study.py`` checks that block and the
JSON's point estimates against each other.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS, FIGURES = HERE / "results", HERE / "figures"
SUMMARY, README = HERE / "summary.json", HERE / "README.md"
MANIFEST = HERE / "zoo.json"

PRIMARY = "C_minus_R_converged"
BASELINES = ("unconverged_fraction", "mean_steps", "noise_confidence", "weight_norm", "ww_alpha")
RESAMPLES, BOOTSTRAP_SEED, TOP_CLUSTER = 10_000, 0, 0.02
METRICS = ("cosine", "zscore", "mg", "madv", "noise_confidence", "weight_norm", "ww_alpha")
ARMS = {  # name: (what it is, rank options); "main" is the pre-registered protocol
    "main": ("digits defaults: at most 100 steps per image; synthesizer boundary (P exactly as "
             "prototype, then B); metrics for Mg, Madv and the baselines",
             dict(synthesizer="boundary", metrics=METRICS)),
    "max_steps_1000": ("at most 1000 steps per image", dict(max_steps=1000)),
    "fixed_steps_250": ("every image takes exactly 250 steps (the authors' code)",
                        dict(fixed_steps=250, max_steps=250)),
}
SEEDS = 3


def manifest() -> dict[str, dict]:
    return json.loads(MANIFEST.read_text())


def run(arms: list[str], weights: Path, only: list[str] | None = None, threads: int | None = None) -> None:
    os.environ["TOOLKIT_PLUGINS"] = ",".join(filter(None, [os.environ.get("TOOLKIT_PLUGINS"),
                                                           str(HERE / "zoo_models.py")]))
    import torch

    from toolkit.ranking import rank, rank_table

    if threads:
        torch.set_num_threads(threads)
    models = {k: v for k, v in manifest().items() if only is None or k in only}
    specs = [f"{m['model']}={weights / m['file']}" for m in models.values()]
    RESULTS.mkdir(exist_ok=True)
    for arm in arms:
        clock = time.perf_counter()
        report = rank(specs, dataset="digits", seeds=SEEDS, out=RESULTS / f"{arm}.nc",
                      overwrite=True, progress=True, **ARMS[arm][1])
        seconds = time.perf_counter() - clock
        print(rank_table(report), file=sys.stderr)
        timing = RESULTS / "timing.json"
        times = json.loads(timing.read_text()) if timing.is_file() else {}
        times[arm] = {"seconds": round(seconds, 1), "models": len(specs),
                      "threads": torch.get_num_threads()}
        timing.write_text(json.dumps(times, indent=1) + "\n")
        print(f"arm {arm}: {seconds:.0f} s", file=sys.stderr)


def partial(arm: str) -> None:
    """Write ``results/<arm>.nc`` from the models an unfinished ranking of ``arm`` finished (its
    work directory), when the rest cannot be afforded; the file says how many it holds."""
    import xarray as xr

    from toolkit.ranking import Entry, combine

    work = RESULTS / f"{arm}.work"
    claim = json.loads((work / "rank.json").read_text())
    entries, results = [], []
    for number, (name, model, sha256) in enumerate(claim["models"], 1):
        file = work / f"{number:03d}" / "results.nc"
        if file.is_file():
            with xr.open_dataset(file) as ds:
                results.append(ds.load())
            entries.append(Entry(name, model, work / f"{number:03d}" / "weights", sha256))
    options = {"seeds": claim["seeds"], **claim["options"]}
    ranked = combine(entries, results, claim["dataset"], "C_minus_R_converged", options)
    ranked.attrs["partial"] = f"{len(entries)} of {len(claim['models'])} models"
    from toolkit.results import write_results

    write_results(ranked, RESULTS / f"{arm}.nc", overwrite=True)
    print(f"{arm}: {len(entries)} of {len(claim['models'])} models", file=sys.stderr)


# --- statistics (vectorised over bootstrap resamples) ----------------------------------------

def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of the rows of ``x`` and ``y`` (shape (..., n)); NaN where one is constant."""
    sx = np.sign(x[..., :, None] - x[..., None, :])
    sy = np.sign(y[..., :, None] - y[..., None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sx * sy).sum((-1, -2)) / np.sqrt((sx ** 2).sum((-1, -2)) * (sy ** 2).sum((-1, -2)))


def spearman_rho(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho (Pearson's r of average ranks) of the rows of ``x`` and ``y``."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(-1) / np.sqrt((rx ** 2).sum(-1) * (ry ** 2).sum(-1))


def oriented(values: np.ndarray, expected: int) -> np.ndarray:
    """Values turned so that higher means better by the score's pre-set direction (none: as is);
    a model without a value is put below every model with one (PREREGISTRATION.md)."""
    v = np.asarray(values, dtype=np.float64) * (expected if expected else 1)
    finite = np.isfinite(v)
    floor = (v[finite].min() - 1.0) if finite.any() else 0.0
    return np.where(finite, v, floor)


def interval(draws: np.ndarray) -> list[float]:
    draws = draws[np.isfinite(draws)]
    if len(draws) < RESAMPLES // 2:
        return [float("nan"), float("nan")]
    return [float(v) for v in np.percentile(draws, [2.5, 97.5])]


def correlate(table: dict[str, np.ndarray], expected: dict[str, int], accuracy: np.ndarray,
              resamples: int = RESAMPLES) -> dict[str, dict]:
    """Each score's tau and rho with accuracy, their intervals, and the bootstrap draws of tau."""
    from scipy.stats import kendalltau

    rng = np.random.default_rng(BOOTSTRAP_SEED)
    idx = rng.integers(0, len(accuracy), (resamples, len(accuracy)))
    out = {}
    for name, values in table.items():
        x = oriented(values, expected[name])
        draws_tau = kendall_tau_b(x[idx], accuracy[idx])
        draws_rho = spearman_rho(x[idx], accuracy[idx])
        out[name] = {
            "expected": expected[name], "with_value": int(np.isfinite(values).sum()),
            "tau": float(kendall_tau_b(x, accuracy)), "tau_ci": interval(draws_tau),
            "rho": float(spearman_rho(x, accuracy)), "rho_ci": interval(draws_rho),
            "p": float(kendalltau(x, accuracy).pvalue), "_draws": draws_tau}
    return out


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values."""
    order = sorted(pvalues, key=pvalues.get)
    out, running = {}, 0.0
    for rank_, name in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank_) * pvalues[name]))
        out[name] = running
    return out


# --- the analysis of record -----------------------------------------------------------------

def load(arm: str, zoo: dict[str, dict]) -> tuple[list[str], dict[str, np.ndarray], dict[str, int]]:
    """Model names (the manifest's order), score values and expected signs of one arm's file."""
    import xarray as xr

    with xr.open_dataset(RESULTS / f"{arm}.nc") as ds:
        files = {str(label): i for i, label in enumerate(ds["model"].values)}  # file stems
        names = [n for n in zoo if Path(zoo[n]["file"]).stem in files]
        rows = [files[Path(zoo[n]["file"]).stem] for n in names]
        table = {str(s): ds["scores"].sel(score=s).values[rows].astype(np.float64)
                 for s in ds["score"].values}
        expected = {str(s): int(ds["score_expected"].sel(score=s)) for s in ds["score"].values}
    return names, table, expected


def subset_taus(table, expected, accuracy, keep) -> dict[str, float]:
    return {name: float(kendall_tau_b(oriented(v, expected[name])[keep], accuracy[keep]))
            for name, v in table.items()}


def analyse_arm(arm: str, zoo: dict[str, dict]) -> tuple[dict, dict]:
    return analyse_table(*ARMS[arm], *load(arm, zoo), zoo)


def analyse_table(what: str, options: dict, names: list[str], table: dict[str, np.ndarray],
                  expected: dict[str, int], zoo: dict[str, dict]) -> tuple[dict, dict]:
    """One arm's statistics (every score against accuracy, overall, in the top cluster and per
    architecture) and its per-model values, from the arm's table of scores."""
    accuracy = np.array([zoo[n]["test_accuracy"] for n in names])
    architectures = np.array([zoo[n]["model"] for n in names])
    stats = correlate(table, expected, accuracy)
    top = accuracy >= accuracy.max() - TOP_CLUSTER
    groups = {"top cluster": top, **{a: architectures == a for a in dict.fromkeys(architectures)}}
    within = {g: subset_taus(table, expected, accuracy, keep) for g, keep in groups.items()}
    for name in stats:
        stats[name]["within"] = {g: within[g][name] for g in groups}
    arm_summary = {"options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
                   "what": what, "models": len(names),
                   "groups": {g: int(keep.sum()) for g, keep in groups.items()}, "scores": stats}
    values = {n: {s: (None if not np.isfinite(v[i]) else float(v[i])) for s, v in table.items()}
              for i, n in enumerate(names)}
    return arm_summary, values


def primary_verdict(scores: dict[str, dict]) -> dict:
    """The pre-registered claim: (a) tau(primary) > 0 at 95 %, (b) tau(primary) - tau(best
    baseline) > 0 at 95 %, paired over the same resamples (weight_norm: |tau|, its favour)."""
    def strength(name):
        return abs(scores[name]["tau"]) if scores[name]["expected"] == 0 else scores[name]["tau"]
    present = [b for b in BASELINES if b in scores and np.isfinite(scores[b]["tau"])]
    best = max(present, key=strength)
    base_draws = scores[best]["_draws"]
    if scores[best]["expected"] == 0:
        base_draws = np.abs(base_draws)
    difference = scores[PRIMARY]["_draws"] - base_draws
    a = scores[PRIMARY]["tau_ci"][0] > 0
    diff_ci = interval(difference)
    b = diff_ci[0] > 0
    return {"score": PRIMARY, "tau": scores[PRIMARY]["tau"], "tau_ci": scores[PRIMARY]["tau_ci"],
            "best_baseline": best, "best_baseline_tau": strength(best),
            "difference": scores[PRIMARY]["tau"] - strength(best), "difference_ci": diff_ci,
            "criterion_a": bool(a), "criterion_b": bool(b), "claim_holds": bool(a and b)}


def analyse(arms: list[str]) -> dict:
    zoo = manifest()
    summary = {"preregistration": "PREREGISTRATION.md", "resamples": RESAMPLES,
               "bootstrap_seed": BOOTSTRAP_SEED, "top_cluster_points": TOP_CLUSTER * 100,
               "seeds": SEEDS, "arms": {}, "models": {}}
    timing = RESULTS / "timing.json"
    times = json.loads(timing.read_text()) if timing.is_file() else {}
    for arm in arms:
        arm_summary, values = analyse_arm(arm, zoo)
        if arm == "main":
            summary["verdict"] = primary_verdict(arm_summary["scores"])
            secondary = {n: s["p"] for n, s in arm_summary["scores"].items()
                         if n != PRIMARY and n not in BASELINES and np.isfinite(s["p"])}
            for name, adjusted in holm(secondary).items():
                arm_summary["scores"][name]["p_holm"] = adjusted
        for s in arm_summary["scores"].values():
            s.pop("_draws")
        arm_summary["seconds"] = times.get(arm, {}).get("seconds")
        summary["arms"][arm] = arm_summary
        if arm == "main":
            summary["out_of_sample"] = out_of_sample(arm)
        for name, scored in values.items():
            entry = summary["models"].setdefault(name, {
                "architecture": zoo[name]["model"], "test_accuracy": zoo[name]["test_accuracy"]})
            entry[arm] = scored
    return summary


# --- towards a score that works: chosen on some models, tested unchanged on the others --------

HELD_OUT = ("base-s1", "base-s2")  # the models of training seeds 1 and 2; the rest (seed 0) choose


def candidates(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every score in either direction, and every sum of two of them as average ranks (within
    the models given): the search space of the new score."""
    from scipy.stats import rankdata

    single = {f"{sign}{name}": (1 if sign == "+" else -1) * v for name, v in table.items()
              for sign in "+-" if np.isfinite(v).sum() >= 3}
    ranks = {name: rankdata(oriented(v, 1)) for name, v in single.items()}
    names = sorted(single)
    out = dict(single)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            if names[a][1:] != names[b][1:]:
                out[f"{names[a]} & {names[b]}"] = ranks[names[a]] + ranks[names[b]]
    return out


def out_of_sample(arm: str = "main") -> dict:
    """Issue section 5: the best of :func:`candidates` on the seed-0 models, then its tau on the
    held-out models against each baseline's (pre-set direction) there, paired bootstrap."""
    zoo = manifest()
    names, table, expected = load(arm, zoo)
    accuracy = np.array([zoo[n]["test_accuracy"] for n in names])
    held = np.array([n.endswith(HELD_OUT) for n in names])
    chosen_on = {k: v[~held] for k, v in table.items()}
    found = candidates(chosen_on)
    taus = {k: float(kendall_tau_b(oriented(v, 1), accuracy[~held])) for k, v in found.items()}
    best = max((k for k in taus if np.isfinite(taus[k])), key=taus.get)
    held_table = {k: v[held] for k, v in table.items()}
    return {"chosen_on": int((~held).sum()), "held_out": int(held.sum()),
            "held_out_models": [n for n, h in zip(names, held) if h],
            "candidates": len(found), "chosen": best, "tau_where_chosen": taus[best],
            **test_unchanged(candidates(held_table)[best], held_table, expected, accuracy[held])}


def test_unchanged(tested: np.ndarray, table: dict[str, np.ndarray], expected: dict[str, int],
                   accuracy: np.ndarray) -> dict:
    """A score chosen elsewhere (higher is better) on these models: its tau with ``accuracy``
    against each baseline's (pre-set direction), with paired bootstrap intervals."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    idx = rng.integers(0, len(accuracy), (RESAMPLES, len(accuracy)))
    score_draws = kendall_tau_b(oriented(tested, 1)[idx], accuracy[idx])
    baselines = {}
    for b in BASELINES:
        x = oriented(table[b], expected[b])
        draws = kendall_tau_b(x[idx], accuracy[idx])
        tau = float(kendall_tau_b(x, accuracy))
        if expected[b] == 0:
            tau, draws = abs(tau), np.abs(draws)
        baselines[b] = {"tau": tau, "tau_ci": interval(draws),
                        "difference_ci": interval(score_draws - draws)}
    return {"tau_held_out": float(kendall_tau_b(oriented(tested, 1), accuracy)),
            "tau_held_out_ci": interval(score_draws), "baselines_held_out": baselines,
            "beats_every_baseline": all(v["difference_ci"][0] > 0 for v in baselines.values())}


# --- figures and the README block -------------------------------------------------------------

def figure(summary: dict, arm: str, path: Path, zoo_name: str = "Digits zoo") -> None:
    """One scatter panel per score: score (oriented) against test accuracy, by architecture."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from toolkit.plotting import OKABE_ITO

    scores = summary["arms"][arm]["scores"]
    order = [PRIMARY, *[b for b in BASELINES if b in scores],
             *sorted(n for n in scores if n != PRIMARY and n not in BASELINES)]
    cols = 5
    rows = -(-len(order) // cols)
    fig = Figure(figsize=(3.1 * cols, 2.7 * rows + 0.8), layout="constrained")
    colours = list(OKABE_ITO.values())
    architectures = list(dict.fromkeys(m["architecture"] for m in summary["models"].values()))
    for place, name in enumerate(order):
        ax = fig.add_subplot(rows, cols, place + 1)
        for number, architecture in enumerate(architectures):
            pts = [(m[arm][name], m["test_accuracy"]) for m in summary["models"].values()
                   if m["architecture"] == architecture and m.get(arm, {}).get(name) is not None]
            if pts:
                x, y = zip(*pts)
                ax.scatter(x, y, s=14, color=colours[number % len(colours)], label=architecture)
        s = scores[name]
        role = "primary" if name == PRIMARY else "baseline" if name in BASELINES else "secondary"
        ax.set_title(f"{name} ({role})\ntau {fmt_ci(s['tau'], s['tau_ci'])}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylabel("test accuracy", fontsize=7)
        ax.set_xlabel("score as computed (no value: not shown)", fontsize=7)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=colours[n % len(colours)], label=a)
               for n, a in enumerate(architectures)]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(architectures), fontsize=8)
    fig.suptitle(f"{zoo_name}, arm {arm}: each score against test accuracy "
                 f"({summary['arms'][arm]['models']} models; tau: Kendall, in the score's "
                 "pre-set direction, 95 % bootstrap interval)", fontsize=10)
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)


def fmt_ci(value, ci) -> str:
    if value is None or not np.isfinite(value):
        return "undefined"
    return f"{value:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def render(summary: dict) -> str:
    """The README's results block, from ``summary`` alone."""
    return "\n".join([render_analysis(summary), "", render_out_of_sample(summary["out_of_sample"]), "",
                      render_seconds(summary)])


def render_analysis(summary: dict) -> str:
    """The analysis of record: the claim, every score's correlations, within groups, per arm."""
    main = summary["arms"]["main"]
    v = summary["verdict"]
    lines = [f"### The pre-registered claim: {'holds' if v['claim_holds'] else 'does not hold'}", "",
             f"Primary score `{PRIMARY}` over {main['models']} models: Kendall tau "
             f"**{fmt_ci(v['tau'], v['tau_ci'])}** (criterion a, interval above 0: "
             f"{'met' if v['criterion_a'] else 'not met'}). Best baseline: `{v['best_baseline']}` "
             f"(tau {v['best_baseline_tau']:+.2f}); primary minus best baseline "
             f"{fmt_ci(v['difference'], v['difference_ci'])} (criterion b, interval above 0: "
             f"{'met' if v['criterion_b'] else 'not met'}).", "",
             "| score | role | expected | with value | Kendall tau [95 % CI] | Spearman rho [95 % CI] "
             "| tau, top cluster | Holm p |", "|---|---|---|---|---|---|---|---|"]
    scores = main["scores"]
    order = [PRIMARY, *[b for b in BASELINES if b in scores],
             *sorted((n for n in scores if n != PRIMARY and n not in BASELINES),
                     key=lambda n: -scores[n]["tau"] if np.isfinite(scores[n]["tau"]) else 9)]
    for name in order:
        s = scores[name]
        role = "primary" if name == PRIMARY else "baseline" if name in BASELINES else "secondary"
        holm_p = f"{s['p_holm']:.3f}" if "p_holm" in s else "-"
        lines.append(f"| `{name}` | {role} | {'+-'[s['expected'] < 0] if s['expected'] else 'none'} "
                     f"| {s['with_value']} | {fmt_ci(s['tau'], s['tau_ci'])} "
                     f"| {fmt_ci(s['rho'], s['rho_ci'])} | {fmt_tau(s['within']['top cluster'])} "
                     f"| {holm_p} |")
    groups = [g for g in main["groups"] if g != "top cluster"]
    sizes = ", ".join(f"{g}: {main['groups'][g]}" for g in groups)
    lines += ["", f"Kendall tau within each architecture ({sizes} "
              f"models) and the top cluster ({main['groups']['top cluster']} models within "
              f"{summary['top_cluster_points']:g} points of the best):", "",
              "| score | top cluster | " + " | ".join(groups) + " |",
              "|---|---|" + "---|" * len(groups)]
    for name in [PRIMARY, *[b for b in BASELINES if b in scores], "C_minus_R", "C_mean", "Mg", "Madv"]:
        if name in scores:
            w = scores[name]["within"]
            lines.append(f"| `{name}` | {fmt_tau(w['top cluster'])} | "
                         + " | ".join(fmt_tau(w[g]) for g in groups) + " |")
    lines += ["", "The step budget (Kendall tau over all models, 95 % CI):", "",
              "| score | " + " | ".join(f"{arm} ({a['models']} models)" for arm, a in summary["arms"].items())
              + " |", "|---|" + "---|" * len(summary["arms"])]
    for name in (PRIMARY, "C_mean_converged", "R_mean_converged", "C_minus_R", "C_mean", "R_mean",
                 "unconverged_fraction", "mean_steps", "converged_pairs"):
        cells = [fmt_ci(a["scores"][name]["tau"], a["scores"][name]["tau_ci"])
                 if name in a["scores"] else "-" for a in summary["arms"].values()]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_out_of_sample(o: dict) -> str:
    lines = [f"Towards a score that works (chosen after seeing the results, so only its held-out "
             f"numbers count): the best of {o['candidates']} candidates (every score in either "
             f"direction, and every sum of two as average ranks) on the {o['chosen_on']} models of "
             f"training seed 0 is `{o['chosen']}` (tau {o['tau_where_chosen']:+.2f} there). On the "
             f"{o['held_out']} held-out models (training seeds 1 and 2) its tau is "
             f"**{fmt_ci(o['tau_held_out'], o['tau_held_out_ci'])}**; it "
             f"{'beats' if o['beats_every_baseline'] else 'does not beat'} every baseline there "
             "(paired 95 % interval of the difference above 0):", ""]
    return "\n".join(lines + held_out_rows(o))


def held_out_rows(o: dict, column: str = "held-out tau") -> list[str]:
    """The table of a score tested unchanged against each baseline."""
    lines = [f"| baseline | {column} [95 % CI] | chosen minus baseline [95 % CI] |", "|---|---|---|"]
    for name, b in o["baselines_held_out"].items():
        lines.append(f"| `{name}` | {fmt_ci(b['tau'], b['tau_ci'])} | "
                     f"{fmt_ci(o['tau_held_out'] - b['tau'], b['difference_ci'])} |")
    return lines


def render_seconds(summary: dict, where: str = "this machine") -> str:
    return f"Seconds per arm (all models, {where}): " + ", ".join(
        f"{arm} {a['seconds']:.0f} s" if a.get("seconds") else f"{arm} -"
        for arm, a in summary["arms"].items()) + "."


def fmt_tau(value) -> str:
    return "undefined" if value is None or not np.isfinite(value) else f"{value:+.2f}"


BLOCK = re.compile(r"(<!-- results:begin -->\n)(.*?)(<!-- results:end -->)", re.S)
REPLICATION = HERE / "replication"
REPLICATION_BLOCK = re.compile(r"(<!-- replication:begin -->\n)(.*?)(<!-- replication:end -->)", re.S)


def render_replication(record: dict, again: dict, timing: dict) -> str:
    """The README's replication block: the study of record beside an independent rebuild of the
    zoo on another machine (``replication/``: its summary, and the timing of each step)."""
    seconds = timing["seconds"]
    whole = seconds["build"] + seconds["rank_main"] + seconds["analyze"]
    rows = ["| | study of record | rebuilt |", "|---|---|---|"]
    for label, get in (
            ("primary `C_minus_R_converged`, tau", lambda s: fmt_ci(s["verdict"]["tau"], s["verdict"]["tau_ci"])),
            ("best baseline", lambda s: f"`{s['verdict']['best_baseline']}` "
                                        f"{s['verdict']['best_baseline_tau']:+.2f}"),
            ("claim holds", lambda s: "yes" if s["verdict"]["claim_holds"] else "no"),
            *((f"`{n}`, tau", lambda s, n=n: fmt_ci(s["arms"]["main"]["scores"][n]["tau"],
                                                     s["arms"]["main"]["scores"][n]["tau_ci"]))
              for n in ("C_mean", "Mg", "noise_confidence")),
            ("the score chosen on seed 0, held-out tau", lambda s: (
                f"`{s['out_of_sample']['chosen']}` "
                f"{fmt_ci(s['out_of_sample']['tau_held_out'], s['out_of_sample']['tau_held_out_ci'])}"))):
        rows.append(f"| {label} | {get(record)} | {get(again)} |")
    return "\n".join([
        f"The whole zoo rebuilt from `build.py` on another machine ({timing['machine']}; torch "
        f"{timing['torch']}, {timing['threads']} threads, {timing['precision']}) on {timing['date']}, "
        "scored in the pre-registered arm and analysed by the same code. The models are not "
        "bit-identical to those of record (another CPU), so this is a replication, not a rerun:", "",
        *rows, "",
        f"End to end, training included: **{whole:,.0f} s** (build {seconds['build']:,.0f} s, "
        f"pre-registered ranking {seconds['rank_main']:,.0f} s, analysis {seconds['analyze']:,.0f} s); "
        f"the `fixed_steps_250` arm another {seconds['rank_fixed_steps_250']:,.0f} s. Commands, "
        "machine and the rebuild's summary: [replication/](replication/)."])


def readme_block(text: str) -> str | None:
    found = BLOCK.search(text)
    return found.group(2).strip() if found else None


def chosen_arms(parser: argparse.ArgumentParser, value: str, arms: dict) -> list[str]:
    """The arms of ``--arms`` (comma-separated), or the parser's error naming the study's arms."""
    chosen = [a.strip() for a in value.split(",")]
    unknown = [a for a in chosen if a not in arms]
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}; arms: {', '.join(arms)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("run", "partial", "analyze", "replication"))
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms")
    parser.add_argument("--weights", type=Path, default=HERE / "weights")
    parser.add_argument("--only", default=None, help="comma-separated model names (run only)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    arms = chosen_arms(parser, args.arms, ARMS)
    if args.command == "run":
        run(arms, args.weights, args.only and args.only.split(","), args.threads)
        return 0
    if args.command == "partial":
        for arm in arms:
            partial(arm)
        return 0
    if args.command == "replication":  # from the committed summaries alone
        write_replication()
        return 0
    arms = [a for a in arms if (RESULTS / f"{a}.nc").is_file()]
    if "main" not in arms:
        parser.error(f"no {RESULTS / 'main.nc'}: run the main arm first")
    summary = analyse(arms)
    SUMMARY.write_text(json.dumps(summary, indent=1, allow_nan=True) + "\n")
    for arm in arms:
        figure(summary, arm, FIGURES / f"scores-{arm}.png")
    block = render(summary)
    write_block(README, BLOCK, block)
    write_replication()
    print(block)
    return 0


def write_replication() -> None:
    """The README's replication block, from summary.json and ``replication/``."""
    block = render_replication(*(json.loads(path.read_text()) for path in (
        SUMMARY, REPLICATION / "summary.json", REPLICATION / "timing.json")))
    write_block(README, REPLICATION_BLOCK, block)


def write_block(path: Path, pattern: re.Pattern, block: str) -> None:
    """Put ``block`` between the markers ``pattern`` finds in ``path``."""
    text = path.read_text()
    if not pattern.search(text):
        raise SystemExit(f"study.py: {path} lacks the markers of its generated block")
    path.write_text(pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(3), text))


if __name__ == "__main__":
    sys.exit(main())
