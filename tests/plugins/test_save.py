"""--save: a results file may keep only the summaries of the n x n x n tensors, or some of them."""
import numpy as np
import pytest
import xarray as xr

import toolkit
from toolkit.__main__ import main
from toolkit import results
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


@pytest.mark.slow
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


@pytest.mark.parametrize("options", [{}, {"reference": "seed"}, {"reference": "seed_means"},
                                     {"self_pairs": "include", "threshold": 1.5}])
@pytest.mark.parametrize("block_values", [1, 50, 10**6])
@pytest.mark.parametrize("boundary", [False, True])
def test_streaming_summaries_equal_the_in_memory_ones(options, block_values, boundary):
    from toolkit_plugins.metrics import cosine, cosine_summaries, zscore

    rng = np.random.default_rng(1)
    features = 1.0 + 0.05 * rng.normal(size=(2, 3, 6, 6, 5))  # alike, so C and R are small ...
    features[:, :, 2, 3] = rng.normal(size=(2, 3, 5))         # ... but for one image: outliers
    ds = results.dataset_from_features(features)
    if boundary:  # a boundary grid's features too: BC and BR and their summaries
        ds["B_features"] = ds["features"] + 0.3 * rng.normal(size=ds["features"].shape)
    in_memory = zscore(ds.assign(cosine(ds)), **options)
    streamed = cosine_summaries(ds, block_values=block_values, **options)
    assert set(streamed) == set(in_memory)
    for name, expected in in_memory.items():
        got = streamed[name]
        assert got.dims == expected.dims and got.attrs == expected.attrs, name
        np.testing.assert_allclose(got.values, expected.values, rtol=1e-12, atol=1e-15, err_msg=name)
    assert (in_memory["C_outlier_fraction"] > 0).any() and (in_memory["R_outlier_fraction"] > 0).any()
    assert ("BC_mean" in streamed) == boundary


def test_a_study_with_streaming_summaries_matches_the_full_one(tiny_plugin, full):
    ds = toolkit.analyze(**TINY_RUN, metrics="cosine_summaries")
    assert "C" not in ds and "R" not in ds
    for name in SUMMARIES:
        np.testing.assert_allclose(ds[name].values, full[name].values, rtol=1e-12, err_msg=name)


def test_the_boundary_tensors_may_be_saved_and_summarised_before_any_training():
    """The pre-training check of the metric chain sees the variables the synthesizer's probe
    makes (B_features), so BC and BR are known names for --save and zscore."""
    from toolkit import probes
    from toolkit.metrics import check_metrics
    from toolkit.plugins import get_registry

    synthesizer = get_registry("synthesizer").get("boundary")
    metrics = tuple(get_registry("metric").get(name) for name in ("cosine", "zscore"))
    check_metrics(metrics, {"zscore": {"variables": ["C", "BC"]}}, ("C", "BC"),
                  probes.of([synthesizer, *metrics]))
    with pytest.raises(toolkit.UsageError, match="--save names BC, which the metrics do not make"):
        check_metrics(metrics, {}, ("C", "BC"), [])  # the prototype synthesizer makes no B


def test_save_is_not_part_of_a_runs_identity():
    """Rerunning with another --save (say, after running out of disk) resumes the same work."""
    from toolkit.pipeline import default_output
    from toolkit.workdir import NOT_IN_IDENTITY

    assert "save" in NOT_IN_IDENTITY
    assert default_output(AnalysisConfig(save="none")) == default_output(AnalysisConfig())


def test_a_streaming_study_keeps_c_and_r_equal_to_the_full_ones(tiny_plugin, full, tmp_path):
    out = tmp_path / "streamed.nc"
    ds = toolkit.analyze(**TINY_RUN, metrics="cosine_summaries", save="C,R", out=out)
    with toolkit.open_results(out) as stream:
        for name in ("C", "R"):
            xr.testing.assert_identical(stream[name].load(), full[name])
            assert stream[name].encoding["chunksizes"] is not None
        for name in SUMMARIES:
            np.testing.assert_allclose(stream[name].values, full[name].values, rtol=1e-12, err_msg=name)
    xr.testing.assert_identical(ds.C.load(), full.C)  # the returned Dataset reads them from the file


def test_streamed_tensors_need_a_results_file(tiny_plugin):
    with pytest.raises(toolkit.UsageError, match="streams the tensors into the results file, so it "
                                                 "needs out="):
        toolkit.analyze(**TINY_RUN, metrics="cosine_summaries", save="C")
