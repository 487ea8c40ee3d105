"""Data-free baselines that need the model itself: what any prototype score must beat to be worth
its cost (issue: the model zoo).

- ``noise_confidence``: the model's mean softmax confidence (its largest class probability) on
  images of uniform noise in [0, 1], 128 per seed, drawn from a generator seeded by the seed's
  position. A classifier that is sure of itself on noise is expected to be the worse one.
- ``weight_norm``: the L2 norm of all the model's parameters (no direction claimed: it depends on
  the architecture and the training recipe).
- ``ww_alpha``: WeightWatcher's mean layer alpha (Martin and Mahoney, *Nature Communications*
  2021): the power-law exponent fitted to each layer's empirical spectral density, averaged over
  the layers it can fit; lower (heavier-tailed) is expected to be better. It runs the
  ``weightwatcher`` package (``pip install weightwatcher``, the ``baselines`` extra) with its
  defaults, so the numbers are the package's own; without it the metric refuses to run, before
  any work.

Each is a probe (the model at hand, once per interval: the same value for every seed of the
weights-only statistics), a metric that averages its per-seed variable over seeds, and a score.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import torch
import xarray as xr

import toolkit

NOISE_IMAGES = 128
NOISE_SEED = 20231  # generators are seeded NOISE_SEED + the seed's position


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def noise_probe(model: torch.nn.Module, grid: torch.Tensor, records, settings) -> dict[str, np.ndarray]:
    """Mean largest softmax probability on ``NOISE_IMAGES`` uniform-noise images per seed."""
    seeds, shape = grid.shape[0], grid.shape[-3:]
    device, out = _device(model), []
    for s in range(seeds):
        generator = torch.Generator().manual_seed(NOISE_SEED + s)
        noise = torch.rand((NOISE_IMAGES, *shape), generator=generator)
        with torch.no_grad():
            probs = torch.cat([model(noise[i:i + settings.batch_size].to(device)).float().softmax(1)
                               for i in range(0, NOISE_IMAGES, settings.batch_size)])
        out.append(float(probs.max(1).values.mean()))
    return {"noise_confidence_seed": np.asarray(out, dtype=np.float64)}


def weight_norm_probe(model: torch.nn.Module, grid: torch.Tensor, records, settings) -> dict[str, np.ndarray]:
    """The L2 norm of every parameter of the model, one value repeated for each seed."""
    with torch.no_grad():
        norm = torch.sqrt(sum(p.detach().double().pow(2).sum() for p in model.parameters()))
    return {"weight_norm_seed": np.full(grid.shape[0], float(norm), dtype=np.float64)}


def ww_alpha(model: torch.nn.Module) -> float:
    """WeightWatcher's mean layer alpha of ``model`` (its ``get_summary()["alpha"]``, default
    ``analyze()``), NaN when it fits no layer. Its console output and warnings are silenced."""
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        import weightwatcher  # prints its SVD backend on import

        watcher = weightwatcher.WeightWatcher(model=model)
        details = watcher.analyze()
        alpha = watcher.get_summary(details).get("alpha", float("nan"))
    return float(alpha) if np.isfinite(alpha) else float("nan")


def ww_probe(model: torch.nn.Module, grid: torch.Tensor, records, settings) -> dict[str, np.ndarray]:
    """:func:`ww_alpha` of the model, one value repeated for each seed."""
    return {"ww_alpha_seed": np.full(grid.shape[0], ww_alpha(model), dtype=np.float64)}


def check_weightwatcher() -> None:
    import importlib.util

    if importlib.util.find_spec("weightwatcher") is None:  # not imported: it prints on import
        raise toolkit.UsageError("metric 'ww_alpha' needs the weightwatcher package: "
                                 "pip install weightwatcher (or the toolkit's [baselines] "
                                 "extra)") from None


def _seed_mean(name: str, long_name: str, units: str):
    def metric(ds: xr.Dataset) -> dict[str, xr.DataArray]:
        return {name: ds[f"{name}_seed"].mean("seed").astype(np.float64).assign_attrs(
            long_name=f"{long_name}, averaged over seeds", units=units)}
    metric.__name__ = name
    metric.__doc__ = f"``{name}`` (interval): ``{name}_seed`` averaged over seeds."
    return metric


BASELINES = {  # name: (probe, long name, units, expected sign, why, check)
    "noise_confidence": (
        noise_probe, f"mean softmax confidence on {NOISE_IMAGES} uniform-noise images", "1", -1,
        "baseline: a better classifier is less sure of itself on noise", None),
    "weight_norm": (
        weight_norm_probe, "L2 norm of all model parameters", "1", 0,
        "baseline: weight norm (no sign claimed)", None),
    "ww_alpha": (
        ww_probe, "WeightWatcher mean layer power-law alpha", "1", -1,
        "baseline (Martin & Mahoney 2021): heavier-tailed layer spectra in better models",
        check_weightwatcher),
}


def _variables(name: str, long_name: str, units: str, seed: bool) -> dict[str, toolkit.Variable]:
    dims, suffix, label = (("interval", "seed"), "_seed", "per seed") if seed else (
        ("interval",), "", "averaged over seeds")
    return {name + suffix: toolkit.Variable(dims, {"long_name": f"{long_name}, {label}",
                                                   "units": units})}


@toolkit.hookimpl
def register_probes(register):
    for name, (probe, long_name, units, *_rest) in BASELINES.items():
        register(name, toolkit.Probe(probe, _variables(name, long_name, units, seed=True)),
                 description=f"{long_name} (for the {name} metric)")


@toolkit.hookimpl
def register_metrics(register):
    for name, (_probe, long_name, units, _sign, _why, check) in BASELINES.items():
        metadata = {"check_options": (lambda check=check: check())} if check else {}
        register(name, _seed_mean(name, long_name, units), probe=name,
                 variables=_variables(name, long_name, units, seed=False),
                 description=f"baseline: {long_name}", **metadata)


@toolkit.hookimpl
def register_scores(register):
    for name, (_probe, _long_name, _units, sign, why, _check) in BASELINES.items():
        register(name, toolkit.Score.of_variable(name, sign, why))
