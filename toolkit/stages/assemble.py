"""The units of every interval -> one ``xarray.Dataset``: the data, the metric chain, the attributes."""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import xarray as xr

from toolkit import probes as probing, results
from toolkit.errors import ToolkitError
from toolkit.metrics import run_chain
from toolkit.stages.context import Run
from toolkit.stages.synthesize import initial_noise
from toolkit.training import Stage

Units = Sequence[Sequence[dict[str, np.ndarray]]]  # (interval, seed) -> unit


def dataset(run: Run, stages: Sequence[Stage], units: Units) -> xr.Dataset:
    """The Dataset of the grids' features, records, images and probes, at ``stages`` (in order)."""
    config = run.config
    images = {name: np.stack([[unit[name] for unit in row] for row in units])
              for name in units[0][0] if probing.is_image(name)}
    probe_dims = probing.variables(run.probes)
    images["noise"] = results.to_uint8(initial_noise(run.shape, config.seed_values).numpy())
    ds = results.build_dataset(
        intervals=[s.fraction for s in stages], seeds=config.seed_values,
        class_names=run.data.class_names,
        features=np.stack([[unit["features"] for unit in row] for row in units]),
        records={name: np.stack([[unit[name] for unit in row] for row in units])
                 for name in units[0][0] if name != "features" and not probing.is_image(name)
                 and name not in probe_dims},
        test_accuracy=[s.test_accuracy for s in stages], train_size=[s.train_size for s in stages],
        images=images)
    return probing.assign(ds, units, run.probes)


def measure(run: Run, ds: xr.Dataset) -> xr.Dataset:
    """The metric chain applied in order; then the pairwise tensors not asked for (``--save``) go."""
    clock = time.perf_counter()
    try:
        ds = run_chain(ds, run.plan.metrics, run.config.metric_options, run.config.save)
    except ToolkitError as exc:
        raise type(exc)(f"{exc}{_kept_hint(run)}") from exc
    run.seconds["metrics"] = time.perf_counter() - clock
    return ds


def _kept_hint(run: Run) -> str:
    if run.work_dir is None:
        return ""
    return (f"; the training and synthesis are kept in {run.work_dir}: rerun the same command with "
            "the metric fixed or left out of --metrics, and only the metrics run again")


def describe(run: Run, ds: xr.Dataset) -> xr.Dataset:
    """The attributes that say where the results came from and how fast they were made."""
    config = run.config
    ds.attrs.update(results.provenance(
        config.to_json(), model=config.model, dataset=config.dataset,
        synthesizer=config.synthesizer, metrics=",".join(config.metrics), device=str(run.device),
        ranks=run.world.size, wall_time_s=round(time.perf_counter() - run.started, 3)))
    ds.attrs.update(results.speed_attrs(
        **{f"time_{stage}_s": value for stage, value in run.seconds.items()},
        image_steps=run.image_steps, precision=config.precision, compile=run.synthesis.compile,
        synthesis_batch_size=run.synthesis.batch_size))
    for name, reason in (("precision_reason", run.precision_reason),
                         ("compile_reason", run.compile_reason)):
        if reason != "asked for":  # what auto chose, and why
            ds.attrs[name] = reason
    return ds
