"""The metrics stage: the metric plugins' chain, checked before training and run on the results.

A metric maps the results Dataset built so far to new variables (``register_metrics`` in
:mod:`toolkit.hookspecs`). This module runs the chain (:func:`apply_metric`), checks it on a small
made-up dataset before any training (:func:`check_metrics`), and knows which of its n x n x n
tensors a run keeps or streams into the file (:func:`pairwise_tensors`, :func:`streamable`).
"""
from __future__ import annotations

import inspect
import json
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from toolkit import probes as probing, results, schema
from toolkit.errors import PluginError, UsageError
from toolkit.plugins import Registration, blamed_on


def check_metrics(metrics: tuple[Registration, ...], options: Mapping[str, Mapping[str, Any]],
                  save: tuple[str, ...] | None = None, probes: Sequence[Registration] = ()
                  ) -> list[str]:
    """Run the metric chain on a small made-up results dataset, so that a metric that cannot run
    (a wrong order, a bad option), or a ``save`` naming a tensor no metric makes, fails before
    hours of training, not after. ``probes`` (the synthesizer's and metrics' probes) add their
    variables to it first, as they do in a run. Returns the names in ``save`` that will be
    streamed (see ``streamable``)."""
    # 2 intervals, 2 seeds, 3 classes, 4 features
    trial = results.dataset_from_features(np.random.default_rng(0).random((2, 2, 3, 3, 4)))
    trial = probing.add_trial_variables(trial, probes)
    for registration in metrics:
        check_metric_options(registration, options.get(registration.name, {}))
        with blamed_on(registration, "failed on a trial dataset before training"):
            trial = apply_metric(trial, registration, options.get(registration.name, {}),
                                 describe="static")
    streams = [name for name in streamable(metrics, trial) if name not in pairwise_tensors(trial)]
    made = pairwise_tensors(trial) + streams
    unknown = [name for name in save or () if name not in made]
    if unknown:
        raise UsageError(f"--save names {', '.join(unknown)}, which the metrics do not make; they "
                         f"make: {', '.join(made) or 'none'} (or pass --save none)")
    return [name for name in streams if name in (save or ())]


def check_metric_options(registration: Registration, options: Mapping[str, Any]) -> None:
    """Fail before training, not after it, when a metric cannot take the user's options."""
    try:
        inspect.signature(registration.obj).bind(None, **options)
    except TypeError as exc:
        raise UsageError(f"metric {registration.name!r} does not take options {json.dumps(options)} "
                         f"({exc})") from None
    check = registration.metadata.get("check_options")
    if check is not None:
        check(**options)


def apply_metric(ds: xr.Dataset, registration: Registration, options: Mapping[str, Any],
                 describe: str = "all") -> xr.Dataset:
    """Merge what one metric returns into ``ds``, warning of variables that cannot explain
    themselves (:func:`_check_description`): ``describe`` "static" checks the attributes and dims
    (the trial run before any work, :func:`check_metrics`), "values" the values against their
    ``valid_range`` (the run itself, after that trial), "all" both. A metric whose attributes
    differ between the trial and real data is warned of as the trial found them."""
    produced = registration.obj(ds, **options)
    if isinstance(produced, xr.Dataset):
        produced = dict(produced.data_vars)
    if not isinstance(produced, Mapping) or not all(isinstance(v, xr.DataArray) for v in produced.values()):
        raise PluginError(f"metric {registration.name!r} (plugin {registration.plugin!r}) must return "
                          "a dict of xarray.DataArray or an xarray.Dataset")
    taken = sorted(name for name in produced if name in ds.variables)
    if taken:
        raise PluginError(f"metric {registration.name!r} (plugin {registration.plugin!r}) returned "
                          f"{', '.join(taken)}, which the results already hold; a metric adds "
                          "variables of new names and never replaces one")
    for name, value in produced.items():
        _check_description(registration, name, value, ds, describe)
    for name, variable in registration.metadata.get("variables", {}).items():
        if name in produced and produced[name].dims != variable.dims:
            raise PluginError(f"metric {registration.name!r} (plugin {registration.plugin!r}) "
                              f"returned {name} with dims {produced[name].dims}; it declares "
                              f"{variable.dims}")
    return ds.assign(produced)


# The dimensions of the core's variables and of C and R: every results file knows them.
KNOWN_DIMS = frozenset(results.PAIRS) | {d for v in schema.CORE.values() for d in v.dims}


def _check_description(registration: Registration, name: str, value: xr.DataArray,
                       ds: xr.Dataset, describe: str = "all") -> None:
    """Warn, naming the metric and variable, of what would make the file explain itself badly:
    no ``long_name``, no ``units`` on numbers, dimensions nobody knows, values outside the
    ``valid_range`` it carries (often inherited from the variable it was computed from)."""
    from toolkit.plugins import PluginWarning

    declared = registration.metadata.get("variables", {}).get(name)
    if describe not in ("static", "values", "all"):
        raise ValueError(f"describe must be static, values or all; got {describe!r}")
    problems = []
    static, by_value = describe in ("static", "all"), describe in ("values", "all")
    if static and "long_name" not in value.attrs:
        problems.append("has no long_name attribute")
    if static and value.dtype.kind == "f" and "units" not in value.attrs:
        problems.append("has no units attribute (\"1\" for a pure number)")
    unknown = [d for d in value.dims if d not in KNOWN_DIMS and d not in ds.dims
               and not (declared and d in declared.dims)]
    if static and unknown:
        problems.append(f"has dims {', '.join(unknown)} that no variable declares")
    valid = value.attrs.get("valid_range")
    if by_value and valid is not None and value.dtype.kind in "fiu" and value.size:
        low, high = np.asarray(valid, dtype=np.float64)[[0, -1]]
        values = np.asarray(value.values, dtype=np.float64)
        if np.nanmin(values) < low or np.nanmax(values) > high:
            problems.append(f"breaks its valid_range {list(valid)} (values "
                            f"{np.nanmin(values):g} to {np.nanmax(values):g})")
    if problems:
        warnings.warn(f"metric {registration.name!r} (plugin {registration.plugin!r}): variable "
                      f"{name} " + "; ".join(problems), PluginWarning, stacklevel=3)


def run_chain(ds: xr.Dataset, metrics: Sequence[Registration],
              options: Mapping[str, Mapping[str, Any]], save: Sequence[str] | None = None,
              what: str = "failed") -> xr.Dataset:
    """The metric chain applied to ``ds`` in order, a metric's failure one line naming its plugin
    (``what`` says where); then the n x n x n tensors not in ``save`` go (None: all stay)."""
    for registration in metrics:
        with blamed_on(registration, what):
            # the attributes were checked on the trial run before any work (check_metrics)
            ds = apply_metric(ds, registration, options.get(registration.name, {}), describe="values")
    if save is not None:  # the summaries stay; the tensors not asked for go
        ds = ds.drop_vars([name for name in pairwise_tensors(ds) if name not in save])
    return ds


def pairwise_tensors(ds: xr.Dataset) -> list[str]:
    """The n x n x n variables of ``ds`` (dims interval, seed, k, j, i), which ``save`` selects."""
    return [name for name in ds.data_vars if ds[name].dims == results.PAIRS]


def streamable(metrics: tuple[Registration, ...], ds: xr.Dataset) -> dict[str, results.Streamed]:
    """The n x n x n variables the metrics can stream into the file without holding them (a
    metric registered with ``streams=f``, ``f(ds) -> {name: results.Streamed}``); ``save``
    naming one has it written block by block."""
    found: dict[str, results.Streamed] = {}
    for registration in metrics:
        if "streams" in registration.metadata:
            found.update(registration.metadata["streams"](ds))
    return found
