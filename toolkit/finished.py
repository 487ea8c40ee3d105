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
from toolkit.config import AnalysisConfig
from toolkit.errors import UsageError
from toolkit.metrics import check_metrics, pairwise_tensors, run_chain
from toolkit.plugins import get_registry
from toolkit.results import check_writable, open_results, provenance, write_results


def measured_from(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without what metrics made: the core's variables and the probes' stay."""
    keep = set(schema.CORE) | {d.name for d in schema.declared().values() if d.kind == "probe"}
    return ds.drop_vars([name for name in ds.data_vars if name not in keep])


def remeasure(results: str | os.PathLike, *, metrics: Sequence[str] | str,
              out: str | os.PathLike, metric_options: Mapping[str, Mapping[str, Any]] | str | None = None,
              save: Sequence[str] | str | None = None, overwrite: bool = False) -> xr.Dataset:
    """Compute ``metrics`` on the results file ``results`` and write the outcome to ``out``.

    Args:
        results: a results file written by ``analyze`` (or by this function).
        metrics: registered metric names, in order (a comma-separated string is split).
        out: the new ``.nc`` file; never the input itself.
        metric_options: ``{metric: {option: value}}`` (or its JSON), as ``--metric_options``.
        save: which n x n x n tensors to keep (default: those the input file kept).
        overwrite: replace an existing ``out``.
    """
    # Parsed and checked as analyze's options are, by the one declaration of each.
    config = AnalysisConfig(metrics=metrics, metric_options=metric_options or {},
                            **({} if save is None else {"save": save}))
    registrations = tuple(get_registry("metric").get(name) for name in config.metrics)
    source, target = Path(results), Path(out)
    if target.resolve() == source.resolve():
        raise UsageError(f"--out {out} is the input file; write the new results to another file")
    check_writable(target, overwrite, folder_may_be_missing=True)
    with open_results(source) as opened:
        kept = config.save if config.save is not None else pairwise_tensors(opened)
        _check_probes(registrations, opened, source)
        check_metrics(registrations, config.metric_options, None, probing.of(registrations))
        ds = measured_from(opened).load()
    ds = run_chain(ds, registrations, config.metric_options, kept, f"failed on {source}")
    ds.attrs.update(provenance(_config(opened.attrs.get("config", "{}"), config),
                               **{**_kept_attrs(opened.attrs), "metrics": ",".join(config.metrics),
                                  "metrics_from": str(source)}))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_results(ds, target, overwrite=overwrite)
    return ds


def _check_probes(registrations, ds: xr.Dataset, source: Path) -> None:
    for registration in registrations:
        probe = registration.metadata.get("probe")
        if probe is None:
            continue
        needed = probing.variables([get_registry("probe").get(probe)])
        missing = [name for name in needed if name not in ds.variables]
        if missing:
            raise UsageError(f"metric {registration.name!r} needs what probe {probe!r} measures on "
                             f"the model during analyze ({', '.join(missing)}), which {source} "
                             f"lacks; rerun analyze with --metrics ...,{registration.name}")


def _config(config_json: str, config: AnalysisConfig) -> str:
    """The input's configuration with the new metric chain."""
    try:
        recorded = json.loads(config_json)
    except ValueError:
        recorded = {}
    recorded.update(metrics=list(config.metrics), metric_options=dict(config.metric_options))
    return json.dumps(recorded, sort_keys=True)


def _kept_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The input's attributes that still describe the new file (not its config or provenance)."""
    replaced = set(provenance("{}")) | {"metrics", "metrics_from"}
    return {k: v for k, v in attrs.items() if k not in replaced}
