"""--save: a results file may keep only the summaries of the n x n x n tensors, or some of them."""
import numpy as np
import pytest
import xarray as xr

import toolkit
from toolkit.__main__ import main
from toolkit.config import AnalysisConfig

from conftest import TINY_RUN

SUMMARIES = ["C_mean", "C_std", "R_mean", "R_std", "C_outlier_fraction", "R_outlier_fraction",
             "C_seed_mean", "R_seed_std"]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    from conftest import TinyPlugin
    from toolkit.plugins import get_plugin_manager

    pm = get_plugin_manager()
    pm.register(TinyPlugin(), name="tiny-test-plugin")
    try:
        out = tmp_path_factory.mktemp("full") / "full.nc"
        toolkit.analyze(**TINY_RUN, out=out)
        with toolkit.open_results(out) as ds:
            return ds.load()
    finally:
        pm.unregister(name="tiny-test-plugin")


@pytest.mark.parametrize("given, kept", [("none", ()), ("", ()), ("C", ("C",)),
                                         (("R", "C"), ("R", "C"))])
def test_save_parses_names_or_none(given, kept):
    assert AnalysisConfig(save=given).save == kept
    assert AnalysisConfig().save is None  # keep every tensor


def test_summaries_only_file_holds_the_same_summaries_without_the_tensors(tiny_plugin, full, tmp_path):
    out = tmp_path / "small.nc"
    toolkit.analyze(**TINY_RUN, save="none", out=out)
    with toolkit.open_results(out) as ds:
        assert "C" not in ds and "R" not in ds
        for name in SUMMARIES:
            xr.testing.assert_identical(ds[name].load(), full[name])
        xr.testing.assert_identical(ds.features.load(), full.features)  # C, R can be made again


def test_save_keeps_the_tensors_it_names(tiny_plugin, full, tmp_path):
    out = tmp_path / "c.nc"
    toolkit.analyze(**TINY_RUN, save="C", out=out)
    with toolkit.open_results(out) as ds:
        assert "R" not in ds
        np.testing.assert_array_equal(ds.C.values, full.C.values)


def test_save_of_a_tensor_no_metric_makes_fails_before_training(tiny_plugin, tmp_path, capsys):
    status = main(["analyze", "--model", "tiny-cnn", "--dataset", "tiny", "--save", "C,D",
                   "--out", str(tmp_path / "x.nc"), "--noprogress"])
    assert status == 2
    err = capsys.readouterr().err
    assert "--save names D" in err and "C, R" in err
    assert not any(tmp_path.iterdir())
