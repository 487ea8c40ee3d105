"""A plain-text table of a results file, one row per interval."""
from __future__ import annotations

import json

import xarray as xr

# column -> (variable, format); the core's own columns, around those the plugins declare
# (``Variable.column``). Variables a file lacks (a run without zscore, say) show as "-". Every
# share is a percentage; ``images`` is a count, the number each row's shares rest on.
HEAD = {"interval": ("interval", "{:.0%}"), "test_acc": ("test_accuracy", "{:.1%}")}
TAIL = {
    "converged": ("converged", "{:.1%}"),
    "images": ("converged", "{:.0f}"),
    "steps": ("steps", "{:.1f}"),
}


def columns() -> dict[str, tuple[str, str]]:
    """Every column of the summary table: heading -> (variable, format)."""
    from toolkit.schema import declared

    declared_columns = {d.variable.column[0]: (name, d.variable.column[1])
                        for name, d in declared().items() if d.variable.column}
    return {**HEAD, **declared_columns, **TAIL}


def summary_variables() -> set[str]:
    """The variables the summary table reads (a results file is opened for these alone)."""
    return {variable for variable, _ in columns().values()}


def _noted(ds: xr.Dataset, attr: str) -> dict | None:
    """The attributes of the first column variable of ``ds`` that carries ``attr``."""
    for variable, _ in columns().values():
        if variable in ds and attr in ds[variable].attrs:
            return ds[variable].attrs
    return None


SUMMARY_HOW_TO_READ = (
    "One row per training interval. test_acc: accuracy on the held-out test split. C_mean, C_std, "
    "R_mean, R_std: mean and standard deviation of the dissimilarities over ordered pairs, per seed, "
    "then averaged over seeds. C_out, R_out: share of values with |z| above the threshold. "
    "converged: share of synthesised images whose loss reached the threshold, out of images (over "
    "every seed and grid cell); steps: mean input-gradient steps per image. Shares are "
    "percentages. A dash marks a number this file does not hold.")

def summary_rows(ds: xr.Dataset) -> list[dict[str, float | None]]:
    """Per interval: test accuracy, C/R mean and std, outlier fractions, converged fraction, the
    number of images it rests on and mean steps per image (over seeds and the whole grid)."""
    per_interval, table = {}, columns()
    for column, (variable, _) in table.items():
        if variable not in ds.variables:
            continue
        values = ds[variable]
        extra = [d for d in values.dims if d != "interval"]
        if column == "images":
            per_interval[column] = values.notnull().sum(extra)
        else:
            per_interval[column] = values.astype(float).mean(extra) if extra else values
    return [{column: float(per_interval[column][t]) if column in per_interval else None
             for column in table} for t in range(ds.sizes["interval"])]


def count(number: int | None, one: str, many: str) -> str:
    """``1 seed``, ``5 seeds``; ``? seeds`` for an unknown number."""
    return f"? {many}" if number is None else f"{number} {one if number == 1 else many}"


def summary_of(results) -> str:
    """The summary table of a results file (reading only its summary variables) or Dataset."""
    from toolkit.results import open_results

    if isinstance(results, (str, bytes)) or hasattr(results, "__fspath__"):
        with open_results(results, needs=summary_variables()) as ds:
            return summary_table(ds)
    return summary_table(results)


def summary_table(ds: xr.Dataset) -> str:
    """The summary as aligned text, under a line naming the run and how its numbers were made."""
    config = json.loads(ds.attrs.get("config", "{}"))
    head = (f"{ds.attrs.get('model', '?')} on {ds.attrs.get('dataset', '?')}: "
            f"{count(ds.sizes.get('k'), 'class', 'classes')}, "
            f"{count(ds.sizes.get('seed'), 'seed', 'seeds')}, "
            f"schedule {config.get('schedule', '?')}")
    if (pairs := _noted(ds, "self_pairs")) is not None:
        head += f"; self-pairs {pairs.get('self_pairs', '?')}"
    if (attrs := _noted(ds, "threshold")) is not None:
        head += f"; outliers |z| > {attrs.get('threshold', '?')} vs {attrs.get('reference', '?')} reference"
    table = columns()
    cells = [list(table)]
    for row in summary_rows(ds):
        cells.append(["-" if row[c] is None else table[c][1].format(row[c]) for c in table])
    widths = [max(len(line[i]) for line in cells) for i in range(len(table))]
    lines = [head] + ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in cells]
    speed = speed_line(ds)
    return "\n".join(lines + ([speed] if speed else []))


def speed_line(ds: xr.Dataset) -> str | None:
    """How fast the run went (``results.SPEED_ATTRS``), or None for a file that does not say."""
    attrs = ds.attrs
    if "time_synthesis_s" not in attrs or "image_steps" not in attrs:
        return None
    synthesis = float(attrs["time_synthesis_s"])
    rate = int(attrs["image_steps"]) / synthesis if synthesis > 0 else float("nan")
    stages = ", ".join(f"{stage} {float(attrs[f'time_{stage}_s']):.1f} s"
                       for stage in ("training", "synthesis", "features", "metrics", "probes")
                       if f"time_{stage}_s" in attrs and (stage != "probes" or attrs[f"time_{stage}_s"]))
    return (f"speed: {rate:,.1f} image-steps/s ({int(attrs['image_steps']):,} steps, "
            f"{attrs.get('precision', '?')}{', compiled' if int(attrs.get('compile', 0)) else ''}, "
            f"batch {attrs.get('synthesis_batch_size', '?')}, on {attrs.get('device', '?')}); {stages}")


def summary_note(ds: xr.Dataset) -> str:
    """What the summary of ``ds`` was computed with: self-pairs and the outliers' reference."""
    notes = []
    if (pairs := _noted(ds, "self_pairs")) is not None:
        notes.append(f"self-pairs {pairs.get('self_pairs', '?')}")
    if (attrs := _noted(ds, "threshold")) is not None:
        notes.append(f"outliers: |z| > {attrs.get('threshold', '?')} against the "
                     f"{attrs.get('reference', '?')} reference")
    return "; ".join(notes)
