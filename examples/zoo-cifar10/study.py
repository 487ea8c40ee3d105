"""The CIFAR-10 zoo's study of record: build and score each model, then the pre-registered analysis.

    python examples/zoo-cifar10/study.py run                # train and score what is missing
    python examples/zoo-cifar10/study.py run --only fast32-ep2
    python examples/zoo-cifar10/study.py analyze            # summary.json, figures/, README tables

``run`` goes through the zoo in its pre-registered order (``build.py``): each model is trained
if its weights are missing, then scored by ``toolkit.rank`` in every arm (:data:`ARMS`), and its
row goes into the committed ``scores.json`` (each arm's score values, the test accuracy the
toolkit measured, seconds, the machine) and ``zoo.json`` (its recipe, test accuracy and training
cost) as soon as it is done, so a build spread over several sessions (the weights stay out of
git) loses nothing. ``analyze`` runs the digits zoo's analysis of record, the same code
(``examples/zoo-digits/study.py``), on the models scored so far, and tests the score the digits
zoo chose unchanged; it writes ``summary.json``, ``figures/*.png`` and the README block between
the ``results`` markers, which ``tests/e2e/test_zoo_study.py`` checks against the JSON.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS, FIGURES = HERE / "results", HERE / "figures"
SUMMARY, README, SCORES, MANIFEST = (HERE / "summary.json", HERE / "README.md", HERE / "scores.json",
                                     HERE / "zoo.json")
_spec = importlib.util.spec_from_file_location("zoo_cifar10_build", HERE / "build.py")
build = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = build
_spec.loader.exec_module(build)
digits = build.load_script(build.ROOT / "examples" / "zoo-digits" / "study.py")

PRIMARY, SEEDS = digits.PRIMARY, 3
kendall_tau_b, oriented, readme_block = digits.kendall_tau_b, digits.oriented, digits.readme_block
write_block = digits.write_block
ARMS = {  # name: (what it is, rank options); "main" is the pre-registered protocol
    "main": ("step 0.1, at most 100 steps per image; synthesizer boundary (P exactly as prototype, "
             "then B); metrics for Mg, Madv and the baselines",
             dict(lr=0.1, max_steps=100, synthesizer="boundary", metrics=digits.METRICS)),
    "max_steps_400": ("step 0.1, at most 400 steps per image", dict(lr=0.1, max_steps=400)),
    "fixed_steps_250": ("every image takes exactly 250 steps of 0.01 (the authors' code)",
                        dict(lr=0.01, fixed_steps=250, max_steps=250)),
}
# The digits zoo's candidate (examples/zoo-digits/summary.json, out_of_sample.chosen), tested here.
DIGITS_CHOSEN = "+noise_confidence & -C_std"


def read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def write(path: Path, content: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, indent=1, allow_nan=True) + "\n")
    tmp.replace(path)


def machine() -> str:
    from toolkit.hardware import CPU_BF16_FLAGS, cpu_flags, cpu_model

    bf16 = sorted(cpu_flags() & set(CPU_BF16_FLAGS))
    return f"{cpu_model()}; {', '.join(bf16) or 'no bf16 units'}"


def score(name: str, row: dict, weights: Path, archive: Path, arms: list[str]) -> None:
    """Score one trained model in every arm it lacks; its rows go to scores.json and zoo.json."""
    import torch

    from toolkit.ranking import rank

    zoo = read(MANIFEST)
    if zoo.get(name, row) != row:  # trained again (weights lost): its old scores are another model's
        scores = read(SCORES)
        scores.pop(name, None)
        write(SCORES, dict(sorted(scores.items())))
    zoo[name] = row
    write(MANIFEST, dict(sorted(zoo.items())))
    for arm in arms:
        if arm in read(SCORES).get(name, {}):
            continue
        clock = time.perf_counter()
        out = RESULTS / arm / f"{name}.nc"
        ds = rank([f"{row['model']}={weights / row['file']}"], dataset="imagefolder",
                  data_root=str(archive), seeds=SEEDS, out=out, overwrite=True, progress=True,
                  precision=build.precision(), compile=False, **ARMS[arm][1]).ds
        seconds = time.perf_counter() - clock
        values = {str(s): float(v) for s, v in zip(ds["score"].values, ds["scores"].values[0])}
        expected = {str(s): int(e) for s, e in zip(ds["score"].values, ds["score_expected"].values)}
        accuracy = float(ds["test_accuracy"].values[0])
        precision = json.loads(ds["model_config"].values[0]).get("precision")
        scores = read(SCORES)
        scores.setdefault(name, {})[arm] = {
            "scores": {k: (None if not np.isfinite(v) else v) for k, v in values.items()},
            "expected": expected, "test_accuracy": accuracy, "seconds": round(seconds, 1),
            "precision": precision, "threads": torch.get_num_threads(), "machine": machine()}
        write(SCORES, dict(sorted(scores.items())))
        print(f"{name}, arm {arm}: {seconds:.0f} s", file=sys.stderr)


def run(arms: list[str], weights: Path, archive: Path, only: list[str] | None) -> None:
    """Train and score the models (or ``only`` those) that lack one of ``arms`` in scores.json; a
    model scored in every arm is not trained again, even where its weights are gone."""
    from toolkit.data import reusing_datasets

    scores = read(SCORES)
    missing = [n for n in (only or build.ZOO) if any(arm not in scores.get(n, {}) for arm in arms)]
    if not missing:
        return
    with reusing_datasets():  # CIFAR-10 is decoded once for all the models' rankings
        build.build(weights, archive, missing,
                    after=lambda name, row: score(name, row, weights, archive, arms))


# --- the analysis of record (the digits zoo's code) ---------------------------------------------

def arm_table(arm: str, zoo: dict, scores: dict, among: list[str]
              ) -> tuple[list[str], dict[str, np.ndarray], dict[str, int]]:
    """Model names (the zoo's order), score values and expected signs of the models ``among``
    those given that are scored in ``arm``."""
    names = [n for n in among if n in zoo and arm in scores.get(n, {})]
    for n in names:  # the scores and the accuracy must be those of one model
        if abs(scores[n][arm]["test_accuracy"] - zoo[n]["test_accuracy"]) > 1e-6:
            raise SystemExit(f"study.py: {n}: the test accuracy of its {arm} scores "
                             f"({scores[n][arm]['test_accuracy']}) is not that of zoo.json "
                             f"({zoo[n]['test_accuracy']}); score it again")
    first = scores[names[0]][arm]
    table = {s: np.array([np.nan if scores[n][arm]["scores"].get(s) is None
                          else scores[n][arm]["scores"][s] for n in names]) for s in first["scores"]}
    return names, table, first["expected"]


def analysis(arms: list[str], among: list[str], zoo: dict, scores: dict) -> tuple[dict, dict]:
    """The digits zoo's analysis of ``among`` (the models scored in each arm): per arm the
    statistics, in arm ``main`` the verdict, Holm's p-values and the digits candidate's test; and
    the per-model values."""
    result, values = {"arms": {}}, {}
    for arm in [a for a in arms if any(a in scores.get(n, {}) for n in among)]:
        names, table, expected = arm_table(arm, zoo, scores, among)
        arm_summary, arm_values = digits.analyse_table(*ARMS[arm], names, table, expected, zoo)
        if arm == "main":
            result["verdict"] = digits.primary_verdict(arm_summary["scores"])
            secondary = {n: s["p"] for n, s in arm_summary["scores"].items()
                         if n != PRIMARY and n not in digits.BASELINES and np.isfinite(s["p"])}
            for name, adjusted in digits.holm(secondary).items():
                arm_summary["scores"][name]["p_holm"] = adjusted
            accuracy = np.array([zoo[n]["test_accuracy"] for n in names])
            tested = digits.candidates(table)[DIGITS_CHOSEN]
            result["out_of_sample"] = {"chosen": DIGITS_CHOSEN, "models": len(names),
                                       **digits.test_unchanged(tested, table, expected, accuracy)}
        for s in arm_summary["scores"].values():
            s.pop("_draws")
        arm_summary["names"] = names
        arm_summary["seconds"] = sum(scores[n][arm]["seconds"] for n in names)
        result["arms"][arm] = arm_summary
        for name, scored in arm_values.items():
            values.setdefault(name, {})[arm] = scored
    return result, values


def analyse(arms: list[str]) -> dict:
    """The analysis of record on the pre-registered models and, once any of its models is scored,
    the same analysis over the whole zoo (PREREGISTRATION.md, amendment 1), under ``extended``."""
    zoo, scores = read(MANIFEST), read(SCORES)
    summary = {"preregistration": "PREREGISTRATION.md", "resamples": digits.RESAMPLES,
               "bootstrap_seed": digits.BOOTSTRAP_SEED, "top_cluster_points": digits.TOP_CLUSTER * 100,
               "seeds": SEEDS, "zoo_size": len(build.PREREGISTERED)}
    summary["interim"] = sum("main" in scores.get(n, {}) for n in build.PREREGISTERED) < len(build.PREREGISTERED)
    record, values = analysis(arms, build.PREREGISTERED, zoo, scores)
    summary.update(record)
    amendment = [n for n in build.ZOO if n not in build.PREREGISTERED]
    if any("main" in scores.get(n, {}) for n in amendment):
        summary["extended"], values = analysis(arms, list(build.ZOO), zoo, scores)
    summary["models"] = {name: {"architecture": zoo[name]["model"],
                                "test_accuracy": zoo[name]["test_accuracy"],
                                "train_seconds": zoo[name]["train_seconds"],
                                "precision": zoo[name].get("precision"),
                                "preregistered": name in build.PREREGISTERED, **by_arm}
                         for name, by_arm in values.items()}
    summary["machines"] = sorted({row[arm]["machine"] for row in scores.values() for arm in row})
    summary["threads"] = sorted({row[arm]["threads"] for row in scores.values() for arm in row})
    summary["scoring_precision"] = sorted({row[arm]["precision"] for row in scores.values() for arm in row})
    return summary


def view(summary: dict, extended: bool = False) -> dict:
    """``summary`` as the digits zoo's renderers and figures read it: the analysis of record (or
    the extended one) with the models it covers."""
    part = summary["extended"] if extended else summary
    covered = set(part["arms"]["main"]["names"])
    return {**summary, **part, "models": {n: m for n, m in summary["models"].items() if n in covered}}


def render(summary: dict) -> str:
    """The README's results block, from ``summary`` alone: the analysis of record, then (once
    scored) the same analysis over the whole zoo, then the models and their cost."""
    record = view(summary)
    done = summary["arms"]["main"]["models"]
    analysis = digits.render_analysis(record)
    head = []
    if done < summary["zoo_size"]:
        head = [f"**Interim: {done} of the {summary['zoo_size']} pre-registered models are scored.** "
                "The verdict of record is that of the whole zoo; these numbers will change.", ""]
        title, rest = analysis.split("\n", 1)
        analysis = f"### The pre-registered claim on {done} models (interim, no verdict)\n{rest}"
    parts = [*head, analysis, "", *render_out_of_sample(summary["out_of_sample"])]
    if "extended" in summary:
        extended = view(summary, extended=True)
        n = extended["arms"]["main"]["models"]
        title, rest = digits.render_analysis(extended).split("\n", 1)
        parts += ["", f"### Amendment 1: the same analysis over all {n} models (secondary)", "",
                  f"PREREGISTRATION.md's amendment 1 added {n - done} stronger models after the "
                  "verdict of record; the same code over all of them cannot change that verdict "
                  "and is reported for what the strong models add.", "", rest.lstrip("\n"), "",
                  *render_out_of_sample(summary["extended"]["out_of_sample"])]
    models = ["| model | architecture | test accuracy | training (s) | precision |", "|---|---|---|---|---|"]
    models += [f"| {n}{'' if m['preregistered'] else ' (amendment 1)'} | `{m['architecture']}` "
               f"| {m['test_accuracy']:.1%} | {m['train_seconds']:.0f} | {m['precision']} |"
               for n, m in summary["models"].items()]
    cost = (f"Built and scored on {', '.join(summary['machines'])} with "
            f"{', '.join(map(str, summary['threads']))} torch threads, synthesis in "
            f"{', '.join(summary['scoring_precision'])}; other work shared the two cores at times, so "
            "the seconds are upper bounds. "
            + digits.render_seconds(summary.get("extended", summary), "the machines above"))
    return "\n".join([*parts, "", "The models, in the order they were built:", "", *models, "", cost])


def render_out_of_sample(o: dict) -> list[str]:
    return [f"Out of sample: the digits zoo's candidate `{o['chosen']}`, tested unchanged on these "
            f"{o['models']} models, has tau **{digits.fmt_ci(o['tau_held_out'], o['tau_held_out_ci'])}**; "
            f"it {'beats' if o['beats_every_baseline'] else 'does not beat'} every baseline here "
            "(paired 95 % interval of the difference above 0):", "",
            *digits.held_out_rows(o, "tau on this zoo")]


# --- the poster's claims on the strong models (issue 16, section 4) ---------------------------

STRONG = 0.85  # the bar for a strong model; the block shows the top cluster and counts these
CLAIMS = re.compile(r"(<!-- strong-models:begin -->\n)(.*?)(<!-- strong-models:end -->)", re.S)
REPLICATION = build.ROOT / "examples" / "replicate-cifar10" / "README.md"


def render_claims(summary: dict) -> str:
    """The poster's claims checked on the zoo's strongest models, per arm: the top cluster (the
    pre-registered one: within 2 points of the best), with how many reach :data:`STRONG`
    (the block of this README and of ``examples/replicate-cifar10/README.md``)."""
    best = max(m["test_accuracy"] for m in summary["models"].values())
    strong = {n: m for n, m in summary["models"].items()
              if m["test_accuracy"] >= best - summary["top_cluster_points"] / 100}
    accuracies = [m["test_accuracy"] for m in strong.values()]
    above = sum(a >= STRONG for a in accuracies)
    lines = [f"The {len(strong)} strongest models of the CIFAR-10 zoo (`examples/zoo-cifar10/`), its "
             f"top cluster (within {summary['top_cluster_points']:g} points of the best): "
             f"{min(accuracies):.2%} to {max(accuracies):.2%} test accuracy, {above} of them at "
             f"{STRONG:.0%} or more. Each is probed at one interval with 3 seeds, in each arm "
             "of the zoo (step 0.1 with at most 100 or 400 steps; exactly 250 steps of 0.01, the "
             "authors' code). Means and standard deviations over ordered pairs without self-pairs; "
             "outliers: |z| > 3 against the pooled reference.", "",
             "| arm | model | accuracy | unconverged | C mean | R mean | std C | std R | C outliers "
             "| R outliers |", "|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for arm in summary["arms"]:
        rows = {n: m[arm] for n, m in strong.items() if arm in m}
        for name, v in rows.items():
            cells = [_cell(v.get(k), f) for k, f in (("unconverged_fraction", ".0%"), ("C_mean", ".3f"),
                     ("R_mean", ".3f"), ("C_std", ".3f"), ("R_std", ".3f"),
                     ("C_outlier_fraction", ".1%"), ("R_outlier_fraction", ".1%"))]
            lines.append(f"| {arm} | {name} | {strong[name]['test_accuracy']:.1%} | " + " | ".join(cells) + " |")
        known = {n: v for n, v in rows.items() if None not in (v.get("C_mean"), v.get("R_mean"),
                                                              v.get("C_std"), v.get("R_std"))}
        below = sum(v["R_mean"] < v["C_mean"] for v in known.values())
        spread = sum(v["R_std"] < v["C_std"] for v in known.values())
        poster = sum(0.25 <= (v.get("C_outlier_fraction") or 0) <= 0.42 for v in rows.values())
        verdicts.append(f"- `{arm}`: R below C in {below} of {len(rows)}; std R below std C in "
                        f"{spread} of {len(rows)}; C outliers in the poster's range (25 to 42 %) in "
                        f"{poster} of {len(rows)}.")
    whole = summary.get("extended", summary)["arms"]["main"]  # every model scored
    c_mean, mg = (whole["scores"].get(k) for k in ("C_mean", "Mg"))
    lines += ["", *verdicts, "", "Across the whole zoo (arm `main`, "
              f"{whole['models']} models{', amendment 1 included' if 'extended' in summary else ''}, accuracy "
              f"{min(m['test_accuracy'] for m in summary['models'].values()):.1%} to "
              f"{max(m['test_accuracy'] for m in summary['models'].values()):.1%}), the poster's "
              "\"C rises with quality\" is Kendall tau of `C_mean` with test accuracy "
              f"{digits.fmt_ci(c_mean['tau'], c_mean['tau_ci'])}, and the authors' `Mg` "
              f"{digits.fmt_ci(mg['tau'], mg['tau_ci'])}."]
    return "\n".join(lines)


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("run", "analyze"))
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms")
    parser.add_argument("--weights", type=Path, default=HERE / "weights")
    parser.add_argument("--archive", type=Path, default=build.ARCHIVE)
    parser.add_argument("--only", default=None, help="comma-separated model names (run only)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    arms = digits.chosen_arms(parser, args.arms, ARMS)
    if args.command == "run":
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        run(arms, args.weights, args.archive, build.digits.chosen_models(parser, build.ZOO, args.only))
        return 0
    if "main" not in arms or not any("main" in read(SCORES).get(n, {}) for n in build.PREREGISTERED):
        parser.error(f"analyze needs the main arm, scored for some pre-registered model in {SCORES}: "
                     "run first, and keep main among --arms")
    summary = analyse(arms)
    write(SUMMARY, summary)
    for arm in summary["arms"]:
        digits.figure(view(summary), arm, FIGURES / f"scores-{arm}.png", "CIFAR-10 zoo")
    if "extended" in summary:
        digits.figure(view(summary, extended=True), "main", FIGURES / "scores-main-extended.png",
                      "CIFAR-10 zoo with amendment 1")
    block = render(summary)
    write_block(README, digits.BLOCK, block)
    claims = render_claims(summary)
    for path in (README, REPLICATION):
        write_block(path, CLAIMS, claims)
    print(block, claims, sep="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
