"""The digits study's numbers, from its two results files into ``summary.json`` and the README.

    python examples/digits-study/summarize.py [--results results] [--write]

Reads ``results/study-resnet18.nc`` and ``results/study-timm-mobilenetv3_small_050.nc`` (made by
``run.sh``), writes ``summary.json`` beside this script (every number the README's tables show,
with the per-interval values each correlation rests on) and, with ``--write``, replaces the
README's block between ``<!-- results:begin -->`` and ``<!-- results:end -->`` with
:func:`render` of that summary. ``tests/e2e/test_digits_study.py`` checks that the README shows
what ``summary.json`` holds and that each correlation is that of its own values.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
from pathlib import Path

import toolkit

HERE = Path(__file__).resolve().parent
MODELS = {"resnet18": "resnet18", "mobilenetv3_small_050": "timm-mobilenetv3_small_050"}
# per-interval columns: heading -> (variable, how it is reduced)
COLUMNS = {"test acc": "test_accuracy", "C mean": "C_mean", "R mean": "R_mean", "C std": "C_std",
           "R std": "R_std", "BC mean": "BC_mean", "BR mean": "BR_mean", "Mg": "Mg", "Madv": "Madv",
           "on boundary": "boundary_success", "third class": "boundary_third_class",
           "P converged": "converged"}
SHARES = ("on boundary", "third class", "P converged")
BLOCK = re.compile(r"(<!-- results:begin -->\n)(.*?)(<!-- results:end -->)", re.S)


def interval_rows(ds) -> list[dict]:
    rows = []
    for t in range(ds.sizes["interval"]):
        at = ds.isel(interval=t)
        row = {"interval": float(at["interval"])}
        for heading, variable in COLUMNS.items():
            row[heading] = float(at[variable].astype(float).mean()) if variable in ds else None
        rows.append(row)
    return rows


def number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def summarize(results: Path) -> dict:
    files = {label: results / f"study-{stem}.nc" for label, stem in MODELS.items()}
    models = {}
    for label, path in files.items():
        with toolkit.open_results(path) as ds:
            models[label] = {"rows": interval_rows(ds), "commit": ds.attrs.get("git_commit"),
                             "toolkit_version": ds.attrs.get("toolkit_version")}
    report = toolkit.quality(list(files.values()), labels=list(files))
    quality = {}
    for c in report.correlations:
        entry = quality.setdefault(c.score, {"expected": c.expected, "scopes": {}})
        values, accuracy = report.points[c.score].get(c.scope, (None, None)) if c.scope != "all" \
            else (None, None)
        entry["scopes"][c.scope] = {
            "points": c.points, "spearman": number(c.spearman), "spearman_p": number(c.spearman_p),
            "pearson": number(c.pearson), "pearson_p": number(c.pearson_p),
            **({"values": [number(v) for v in values], "accuracy": [float(a) for a in accuracy]}
               if values is not None else {})}
    return {"models": models, "quality": quality}


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_r(value: float | None, p: float | None = None) -> str:
    if value is None:
        return "undefined"
    text = f"{value:+.2f}"
    return f"**{text}** (p = {p:.2g})" if p is not None and p < 0.05 else text


def render(summary: dict) -> str:
    """The README's results block, from ``summary`` alone."""
    head = ["model", "interval", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, model in summary["models"].items():
        for index, row in enumerate(model["rows"]):
            cells = [label if index == 0 else "", f"{row['interval']:.0%}".replace("%", " %")]
            for heading in COLUMNS:
                value = row[heading]
                cells.append("-" if value is None else f"{value:.0%}".replace("%", " %")
                             if heading in SHARES else f"{value:.3f}")
            lines.append("| " + " | ".join(cells) + " |")
    labels = list(summary["models"])
    lines += ["", "Each score against test accuracy (`toolkit quality` over both files; each point "
                  "an interval; bold: p < 0.05):", "",
              "| score | " + " | ".join(f"Spearman, {label}" for label in labels)
              + " | Spearman, pooled | Pearson, pooled | expected |", "|---|" + "---|" * (len(labels) + 3)]
    for score, entry in summary["quality"].items():
        scopes = entry["scopes"]
        pooled = scopes.get("all", {})
        cells = [f"`{score}`"] + [fmt_r(scopes.get(label, {}).get("spearman"),
                                         scopes.get(label, {}).get("spearman_p")) for label in labels]
        cells += [fmt_r(pooled.get("spearman"), pooled.get("spearman_p")),
                  fmt_r(pooled.get("pearson"), pooled.get("pearson_p")),
                  {1: "+", -1: "−", 0: "none"}[entry["expected"]]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_block(text: str) -> str | None:
    found = BLOCK.search(text)
    return found.group(2).strip() if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--write", action="store_true", help="also rewrite the README's block")
    args = parser.parse_args()
    summary = summarize(args.results)
    summary["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                       capture_output=True, text=True).stdout.strip() or None
    (HERE / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    block = render(summary)
    print(block)
    if args.write:
        readme = HERE / "README.md"
        text = readme.read_text()
        if not BLOCK.search(text):
            raise SystemExit("summarize.py: README.md lacks the results markers")
        readme.write_text(BLOCK.sub(lambda m: m.group(1) + block + "\n" + m.group(3), text))


if __name__ == "__main__":
    main()
