"""``toolkit metrics``: metrics on a finished results file, and a run's metrics changed on resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import toolkit
from conftest import TINY_RUN
from toolkit.errors import PluginError, UsageError
from toolkit.plugins import get_plugin_manager
from toolkit.testing import register_plugin

RUN = {**TINY_RUN, "intervals": (1.0,), "max_steps": 20}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny study's results file (cosine, zscore), with the tiny plugin registered."""
    from conftest import TinyPlugin

    pm = get_plugin_manager()
    pm.register(TinyPlugin(), name="tiny-module-plugin")
    out = tmp_path_factory.mktemp("finished") / "run.nc"
    try:
        toolkit.analyze(**RUN, out=out)
    finally:
        pm.unregister(name="tiny-module-plugin")
    return out


@pytest.mark.slow
def test_metrics_on_a_finished_file_add_a_metric_and_change_options(finished, tiny_plugin, tmp_path):
    before = finished.read_bytes()
    out = tmp_path / "more.nc"
    ds = toolkit.remeasure(finished, metrics="cosine,zscore,gap", out=out,
                         metric_options={"zscore": {"reference": "seed_means"}, "gap": {"scale": 2}})
    assert finished.read_bytes() == before                      # the input is never touched
    with xr.open_dataset(finished) as old, xr.open_dataset(out) as new:
        np.testing.assert_array_equal(new["features"].values, old["features"].values)
        np.testing.assert_allclose(new["C_mean"].values, old["C_mean"].values, rtol=1e-6)
        expected = 2 * (new["C"].mean(("k", "j", "i")) - new["R"].mean(("k", "j", "i")))
        np.testing.assert_allclose(new["gap"].values, expected.values, rtol=1e-6)
        assert json.loads(new.attrs["config"])["metric_options"]["zscore"] == {"reference": "seed_means"}
        assert new.attrs["metrics"] == "cosine,zscore,gap" and new.attrs["metrics_from"] == str(finished)
        assert new.attrs["model"] == old.attrs["model"]
    assert set(ds.data_vars) >= {"gap", "C_outlier_fraction"}


@pytest.mark.slow
def test_metrics_refuses_its_input_as_output_a_missing_probe_and_an_existing_file(finished, tmp_path):
    with pytest.raises(UsageError, match="is the input file"):
        toolkit.remeasure(finished, metrics="cosine", out=finished)
    with pytest.raises(UsageError, match="probe 'adversarial'.*rerun analyze with --metrics ...,madv"):
        toolkit.remeasure(finished, metrics="cosine,zscore,mg,madv", out=tmp_path / "m.nc")
    (tmp_path / "taken.nc").write_text("mine")
    with pytest.raises(UsageError, match="exists"):
        toolkit.remeasure(finished, metrics="cosine", out=tmp_path / "taken.nc")
    assert (tmp_path / "taken.nc").read_text() == "mine" and not (tmp_path / "m.nc").exists()


def _greedy(ds):
    return {"C_mean": ds["test_accuracy"] * 0, "test_accuracy": ds["test_accuracy"] * 0 + 0.999}


def _broken(ds):
    if ds.sizes["interval"] == 1:  # the made-up trial dataset has 2: this fails on real results only
        raise ValueError("boom")
    return {}


class Hostile:
    __name__ = "hostile-metrics"

    @toolkit.hookimpl
    def register_metrics(self, register):
        register("greedy", _greedy)
        register("broken", _broken)


@pytest.fixture
def hostile(tiny_plugin):
    with register_plugin(Hostile(), name="hostile-metrics"):
        yield


def test_a_metric_may_not_replace_a_variable(hostile):
    with pytest.raises(PluginError, match="metric 'greedy' \\(plugin 'hostile-metrics'\\) returned "
                                          "C_mean, test_accuracy, which the results already hold"):
        toolkit.analyze(**RUN, metrics=("cosine", "zscore", "greedy"))


@pytest.mark.slow
def test_a_failed_metric_keeps_the_work_and_a_rerun_without_it_only_measures(hostile, tmp_path,
                                                                           capsys):
    out = tmp_path / "r.nc"
    with pytest.raises(PluginError) as failed:
        toolkit.analyze(**RUN, metrics=("cosine", "broken"), out=out)
    message = str(failed.value)
    assert "metric 'broken' (plugin 'hostile-metrics') failed: ValueError: boom" in message
    assert "kept in" in message and "only the metrics run again" in message and not out.exists()
    capsys.readouterr()
    toolkit.analyze(**RUN, metrics=("cosine", "zscore"), out=out, progress=True)
    assert "resuming from" in capsys.readouterr().err and out.exists()
