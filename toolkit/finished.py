"""Metrics on a finished results file: ``toolkit metrics``, no training, no synthesis.

Metrics read only the stored Dataset (``register_metrics``), so a results file holds all they need:
the features and records of the grids, and what the probes measured while the model was at hand.
:func:`remeasure` keeps exactly those (the core's variables and every probe's), drops what the
file's metrics made, runs the chain the user names (checked on a made-up dataset first, as
``analyze`` does) and writes a new file. A metric that needs a probe the file was made without is
refused before anything runs, with the ``analyze`` option that would make it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import xarray as xr

from toolkit import probes as probing, schema
from toolkit.errors import UsageError
from toolkit.metrics import apply_metric, check_metrics, pairwise_tensors
from toolkit.plugins import blamed_on, get_registry
from toolkit.results import check_writable, open_results, provenance, write_results


def measured_from(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without what metrics made: the core's variables and the probes' stay."""
    keep = set(schema.CORE) | {d.name for d in schema.declared().values() if d.kind == "probe"}
    return ds.drop_vars([name for name in ds.data_vars if name not in keep])


def remeasure(results: str | os.PathLike, *, metrics: Sequence[str] | str,
              out: str | os.PathLike, metric_options: Mapping[str, Mapping[str, Any]] | None = None,
              save: Sequence[str] | None = None, overwrite: bool = False) -> xr.Dataset:
    """Compute ``metrics`` on the results file ``results`` and write the outcome to ``out``.

    Args:
        results: a results file written by ``analyze`` (or by this function).
        metrics: registered metric names, in order (a comma-separated string is split).
        out: the new ``.nc`` file; never the input itself.
        metric_options: ``{metric: {option: value}}``, as ``--metric_options``.
        save: which n x n x n tensors to keep (default: those the input file kept).
        overwrite: replace an existing ``out``.
    """
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
    if not names or not all(names):
        raise UsageError("--metrics is empty; name at least one metric, e.g. cosine,zscore")
    options = dict(metric_options or {})
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise UsageError(f"--metric_options names metrics not in --metrics: {', '.join(unknown)}")
    registrations = tuple(get_registry("metric").get(name) for name in names)
    source, target = Path(results), Path(out)
    if target.resolve() == source.resolve():
        raise UsageError(f"--out {out} is the input file; write the new results to another file")
    check_writable(target, overwrite, folder_may_be_missing=True)
    with open_results(source) as opened:
        kept = list(save) if save is not None else pairwise_tensors(opened)
        _check_probes(registrations, opened, source)
        probes = probing.of(registrations)
        check_metrics(registrations, options, None, probes)
        ds = measured_from(opened).load()
    for registration in registrations:
        with blamed_on(registration, f"failed on {source}"):
            ds = apply_metric(ds, registration, options.get(registration.name, {}))
    ds = ds.drop_vars([name for name in pairwise_tensors(ds) if name not in kept])
    ds.attrs.update(provenance(_config(opened.attrs.get("config", "{}"), names, options),
                               **{**_kept_attrs(opened.attrs), "metrics": ",".join(names),
                                  "metrics_from": str(source)}))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_results(ds, target, overwrite=overwrite)
    return ds


def _check_probes(registrations, ds: xr.Dataset, source: Path) -> None:
    for registration in registrations:
        probe = registration.metadata.get("probe")
        if probe is None:
            continue
        variables = [name for name, v in get_registry("probe").get(probe).obj.variables.items()
                     if not v.image]
        missing = [name for name in variables if name not in ds.variables]
        if missing:
            raise UsageError(f"metric {registration.name!r} needs what probe {probe!r} measures on "
                             f"the model during analyze ({', '.join(missing)}), which {source} "
                             f"lacks; rerun analyze with --metrics ...,{registration.name}")


def _config(config_json: str, metrics: list[str], options: Mapping[str, Any]) -> str:
    try:
        config = json.loads(config_json)
    except ValueError:
        config = {}
    config.update(metrics=metrics, metric_options=dict(options))
    return json.dumps(config, sort_keys=True)


def _kept_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The input's attributes that still describe the new file (not its config or provenance)."""
    replaced = set(provenance("{}")) | {"metrics", "metrics_from"}
    return {k: v for k, v in attrs.items() if k not in replaced}
