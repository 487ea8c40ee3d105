"""One self-contained HTML page of one or more results files.

The page needs nothing but itself: figures are PNG data URIs, the style sheet is inline, and it
holds no script and loads nothing. Several results files are shown side by side, one column each,
so runs of different models or datasets compare at a glance; their tables are one table each, a group
of rows per run, so the columns line up and fit the page's width.
"""
from __future__ import annotations

import base64
import datetime
import html
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr

from toolkit import plotting
from toolkit.errors import UsageError
from toolkit.files import atomic_write, check_output, created_folder
from toolkit.table import SUMMARY_HOW_TO_READ, columns, summary_note, summary_rows

CONVERGENCE_HOW_TO_READ = (
    "Per interval, over every seed and every cell of the grid P: how many images were synthesised, "
    "how many reached the loss threshold, and how many steps and how much loss it took.")

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1400px; padding: 1rem 2rem 3rem; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; margin-top: 2.2rem; }
h3 { font-size: 1rem; margin: 0.4rem 0; }
.meta, .how { color: #444; font-size: 0.92rem; max-width: 70rem; }
.runs { display: grid; gap: 1.5rem; grid-template-columns: repeat(var(--runs), minmax(0, 1fr)); }
.run { min-width: 0; overflow-x: auto; }
.wide { overflow-x: auto; }
tr.group th { text-align: left; background: #fff; padding-top: 0.7rem; font-size: 0.9rem; }
tr.group .note { font-weight: normal; color: #444; margin-left: 0.8rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.3rem 0 0.8rem; }
th, td { padding: 0.2rem 0.55rem; border-bottom: 1px solid #e2e2e2; text-align: right; }
th { background: #f3f3f3; }
table.config td, table.config th { text-align: left; vertical-align: top; }
table.config td { font-family: ui-monospace, monospace; word-break: break-all; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; box-sizing: border-box; }
.missing { color: #8a4b00; background: #fff6e5; padding: 0.5rem 0.8rem; border-radius: 4px; }
nav a { margin-right: 0.9rem; }
"""


def report(results: xr.Dataset | str | os.PathLike | Sequence[xr.Dataset | str | os.PathLike],
           out: str | os.PathLike = "report.html", *, overwrite: bool = False, dpi: int = 110,
           seed: int | None = None, interval: float | None = None) -> Path:
    """Write one self-contained HTML page about one or more results files; return its path.

    Args:
        results: a results file or Dataset, or several (shown side by side).
        out: the page to write (``.html``); an existing one is kept unless ``overwrite``.
        overwrite: replace an existing page.
        dpi: resolution of the embedded figures.
        seed, interval: which seed and interval the image figures show (default: the first seed
            and the last interval of each run).

    Raises:
        UsageError: a missing or foreign results file, a bad ``out``, an existing page.
    """
    out = Path(out)
    check_output(out, (".html", ".htm"), "an .html file", overwrite, folder_may_be_missing=True)
    items = [results] if isinstance(results, (xr.Dataset, str, os.PathLike)) else list(results)
    if not items:
        raise UsageError("give at least one results file")
    runs, opened = [], []
    try:
        for item in items:
            ds, path = plotting.as_dataset(item)
            if path is not None:
                opened.append(ds)
            runs.append((path.name if path is not None else plotting.run_title(ds), ds))
        page = render_page(runs, dpi=dpi, seed=seed, interval=interval)
    finally:
        for ds in opened:
            ds.close()
    return _write_text(out, page, overwrite)


def render_page(runs: Sequence[tuple[str, xr.Dataset]], dpi: int = 110, seed: int | None = None,
                interval: float | None = None) -> str:
    """The page's HTML for ``runs``: (label, Dataset) pairs, one column each."""
    from toolkit.version import __version__

    columns = f' style="--runs: {len(runs)}"'
    labels = [label for label, _ in runs]
    figures = {name: spec for name, spec in plotting.registered_figures().items()
               if not spec.optional or any(_has_figure(ds, name) for _, ds in runs)}
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request: the page loads nothing
        f"<title>toolkit report: {_e(', '.join(labels))}</title>",
        f"<style>{STYLE}</style>", "</head>", "<body>",
        "<h1>Prototype dissimilarities of image classifiers, probed without data</h1>",
        f'<p class="meta">Report of {len(runs)} results file{"s" if len(runs) > 1 else ""} '
        f"({_e(', '.join(labels))}), made by toolkit {_e(__version__)} on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
        "C compares intermediary prototypes with the same origin class, R those with the same "
        "target class; dissimilarity is 1 - cosine of penultimate features.</p>",
        '<nav><a href="#summary">Summary</a><a href="#convergence-statistics">Convergence</a>'
        + "".join(f'<a href="#figure-{name}">{_e(spec.heading)}</a>'
                  for name, spec in figures.items())
        + '<a href="#quality">Quality</a><a href="#runs">Configuration</a></nav>',
        '<section id="summary"><h2>Summary per interval</h2>',
        f'<p class="how">{_e(SUMMARY_HOW_TO_READ)}</p>', f'<div class="wide">{summary_html(runs)}</div>',
        "</section>",
        '<section id="convergence-statistics"><h2>Convergence statistics</h2>',
        f'<p class="how">{_e(CONVERGENCE_HOW_TO_READ)}</p>',
        f'<div class="wide">{convergence_html(runs)}</div>', "</section>",
    ]
    for name, spec in figures.items():
        parts += [f'<section id="figure-{name}"><h2>{_e(spec.heading)}</h2>',
                  f'<p class="how">{_e(spec.how_to_read)}</p>', f'<div class="runs"{columns}>']
        for label, ds in runs:
            parts.append(f'<div class="run">{_figure_html(ds, name, label, dpi, seed, interval)}</div>')
        parts.append("</div></section>")
    parts += quality_section(runs, dpi)
    parts += [
        '<section id="runs"><h2>Runs and their configuration</h2>',
        f'<div class="runs"{columns}>',
        *(f'<div class="run"><h3>{_e(label)}</h3><p class="meta">{_e(plotting.run_title(ds))}</p>'
          f"{config_table(ds)}</div>" for label, ds in runs),
        "</div></section>", "</body>", "</html>", ""]
    return "\n".join(parts)


QUALITY_HOW_TO_READ = (
    "Does a data-free score track test accuracy? For each score, its Spearman (rank) and Pearson "
    "correlation with test accuracy across the intervals of each run and, with several runs, across "
    "every run's intervals pooled (scope all), with scipy's two-sided p-values. Expected: the sign "
    "the poster or the paper leads one to expect (none where neither claims one); holds: the "
    "Spearman coefficient has that sign. Ranked by Spearman in the expected direction. With a "
    "handful of intervals these numbers are fragile; read them with their p-values.")


def quality_section(runs: Sequence[tuple[str, xr.Dataset]], dpi: int = 110) -> list[str]:
    """The report's section on how each data-free score tracks test accuracy."""
    from toolkit.quality_report import QUALITY_COLUMNS, quality, quality_cell, quality_figure, quality_rows

    head = ['<section id="quality"><h2>Data-free quality: scores against test accuracy</h2>',
            f'<p class="how">{_e(QUALITY_HOW_TO_READ)}</p>']
    try:
        result = quality([ds for _, ds in runs], labels=[label for label, _ in runs])
    except UsageError as missing:
        return head + [f'<p class="missing">not computed: {_e(str(missing))}</p>', "</section>"]
    body = [''.join(f'<td data-column="{column}">{_e(quality_cell(column, row[column]))}</td>'
                    for column in QUALITY_COLUMNS) for row in quality_rows(result)]
    body = [f"<tr>{cells}</tr>" for cells in body]
    table = ('<table class="quality"><thead><tr>' + "".join(f"<th>{c}</th>" for c in QUALITY_COLUMNS)
             + f'</tr></thead><tbody>{"".join(body)}</tbody></table>')
    data = base64.b64encode(plotting.figure_png(quality_figure(result), dpi)).decode("ascii")
    return head + [table, f'<figure><img src="data:image/png;base64,{data}" '
                          'alt="each data-free score against test accuracy"></figure>', "</section>"]


def _has_figure(ds: xr.Dataset, name: str) -> bool:
    try:
        plotting.render(ds, name).clf()
    except plotting.MissingData:
        return False
    return True


def _figure_html(ds: xr.Dataset, name: str, label: str, dpi: int, seed: int | None,
                 interval: float | None) -> str:
    try:
        fig = plotting.render(ds, name, seed=_if_in(ds, "seed", seed),
                              interval=_if_in(ds, "interval", interval))
    except plotting.MissingData as missing:
        return f'<p class="missing">{_e(label)}: not drawn, {_e(str(missing))}</p>'
    data = base64.b64encode(plotting.figure_png(fig, dpi)).decode("ascii")
    alt = f"{plotting.registered_figures()[name].heading}, {plotting.run_title(ds)}"
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
            f"<figcaption>{_e(label)}</figcaption></figure>")


def _if_in(ds: xr.Dataset, dim: str, value: Any) -> Any:
    """A chosen seed or interval that this run holds, else None (its default): runs compared side
    by side need not share seeds or intervals."""
    if value is None:
        return None
    held = ds[dim].values
    return value if np.isclose(held.astype(float), float(value)).any() else None


def config_table(ds: xr.Dataset) -> str:
    """The run's configuration (JSON attribute) and provenance as a two-column table."""
    try:
        config = json.loads(ds.attrs.get("config", "{}"))
    except json.JSONDecodeError:
        config = {"config": ds.attrs.get("config")}
    rows = {key: json.dumps(value) for key, value in sorted(config.items())}
    for key in ("toolkit_version", "toolkit_schema_version", "created_at", "device", "wall_time_s",
                "library_versions"):
        if key in ds.attrs:
            rows[key] = str(ds.attrs[key])
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows.items())
    return f'<table class="config">{body}</table>'


def summary_html(runs: Sequence[tuple[str, xr.Dataset]]) -> str:
    """``toolkit.table.summary_rows`` of every run as one HTML table, a group of rows per run
    (aligned columns to compare, and the width of the page rather than a column of it); each cell
    keeps its exact value in ``data-value``, shown with the plain-text table's format."""
    table = columns()
    groups = []
    for label, ds in runs:
        rows = []
        for row in summary_rows(ds):
            cells = []
            for column, (_, fmt) in table.items():
                value = row[column]
                if value is None:
                    cells.append(f'<td data-column="{column}">-</td>')
                else:
                    cells.append(f'<td data-column="{column}" data-value="{value!r}">'
                                 f"{_e(fmt.format(value))}</td>")
            rows.append("".join(cells))
        note = "; ".join(filter(None, (plotting.run_title(ds), summary_note(ds))))
        groups.append((label, note, rows))
    return _grouped_table("summary", list(table), groups)


def _grouped_table(css_class: str, head: Sequence[str],
                   groups: Sequence[tuple[str, str, Sequence[str]]]) -> str:
    """One table, a ``<tbody>`` per (label, note, rows of cells) group under a heading row."""
    bodies = "".join(
        f'<tbody data-run="{_e(label)}"><tr class="group"><th colspan="{len(head)}" '
        f'scope="rowgroup">{_e(label)}<span class="note">{_e(note)}</span></th></tr>'
        + "".join(f"<tr>{row}</tr>" for row in rows) + "</tbody>"
        for label, note, rows in groups)
    header = "".join(f"<th>{_e(column)}</th>" for column in head)
    return f'<table class="{css_class}"><thead><tr>{header}</tr></thead>{bodies}</table>'


def convergence_rows(ds: xr.Dataset) -> list[dict[str, float]]:
    """Per interval: images, converged count and share, steps (mean, median, max) and final loss
    (median, max), over every seed and grid cell."""
    rows = []
    for t in range(ds.sizes["interval"]):
        at = ds.isel(interval=t)
        converged = at["converged"].values.astype(bool)
        steps, loss = at["steps"].values.astype(float), at["loss"].values.astype(float)
        rows.append({"interval": float(ds["interval"][t]), "images": converged.size,
                     "converged": int(converged.sum()), "unconverged": int((~converged).sum()),
                     "converged_share": float(converged.mean()), "steps_mean": float(steps.mean()),
                     "steps_median": float(np.median(steps)), "steps_max": float(steps.max()),
                     "loss_median": float(np.median(loss)), "loss_max": float(loss.max())})
    return rows


CONVERGENCE_COLUMNS = {"interval": "{:.0%}", "images": "{:d}", "converged": "{:d}",
                       "unconverged": "{:d}", "converged_share": "{:.1%}", "steps_mean": "{:.1f}",
                       "steps_median": "{:.0f}", "steps_max": "{:.0f}", "loss_median": "{:.2e}",
                       "loss_max": "{:.2e}"}


def convergence_html(runs: Sequence[tuple[str, xr.Dataset]]) -> str:
    """``convergence_rows`` of every run as one HTML table, a group of rows per run."""
    groups = [(label, "", ["".join(f'<td data-column="{c}">{_e(fmt.format(row[c]))}</td>'
                                   for c, fmt in CONVERGENCE_COLUMNS.items())
                           for row in convergence_rows(ds)])
              for label, ds in runs]
    return _grouped_table("convergence", list(CONVERGENCE_COLUMNS), groups)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _write_text(out: Path, text: str, overwrite: bool) -> Path:
    """Write atomically; refuse if ``out`` appeared while the page was made."""
    if out.exists() and not overwrite:
        raise UsageError(f"{out} appeared while the report was made; pass --overwrite")
    with created_folder(out.parent):  # removed again if the page cannot be written
        return atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
