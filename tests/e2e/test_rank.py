"""``toolkit rank``: classifiers ranked by data-free scores, one file with a ``model`` dimension."""
from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
import torch
import xarray as xr

import toolkit
from conftest import TinyCNN, make_tiny_dataset
from toolkit.model import NormalizedClassifier
from toolkit.ranking import bootstrap_interval, rank, rank_table
from toolkit.training import TrainingSettings, train_through_intervals

FAST = dict(dataset="tiny", seeds=1, max_steps=30, batch_size=16)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Five TinyCNN weight files, from untrained to well trained (about a second)."""
    folder = tmp_path_factory.mktemp("zoo")
    data = make_tiny_dataset()
    paths = []
    for epochs in (0, 1, 2, 5, 20):
        torch.manual_seed(epochs)
        model = NormalizedClassifier(TinyCNN(3, 1, 6), data.mean, data.std)
        if epochs:
            list(train_through_intervals(model, data, [1.0], "data",
                                         TrainingSettings(epochs=epochs, lr=0.1, batch_size=16), 0,
                                         "cpu"))
        paths.append(folder / f"tiny-e{epochs:02d}.pt")
        torch.save(model.state_dict(), paths[-1])
    return paths


@pytest.mark.slow
def test_rank_five_models_into_one_file_with_a_model_dimension(tiny_plugin, zoo, tmp_path):
    out = tmp_path / "ranked" / "r.nc"
    report = rank([f"tiny-cnn={p}" for p in zoo], out=out, **FAST)
    with xr.open_dataset(out) as ds:
        assert list(ds["model"].values) == [p.stem for p in zoo]
        assert ds["C"].dims == ("model", "interval", "seed", "k", "j", "i")
        assert ds["scores"].dims == ("model", "score") and "C_minus_R" in ds["score"]
        assert list(ds["sha256"].values) == [hashlib.sha256(p.read_bytes()).hexdigest() for p in zoo]
        assert [str(w) for w in ds["weights"].values] == [str(p.resolve()) for p in zoo]
        accuracy = ds["test_accuracy"].values
        own = [json.loads(a) for a in ds["model_attrs"].values]
    assert accuracy.shape == (5,) and accuracy[-1] > accuracy[0]
    # each model's run as its own file recorded it: what ran, how fast, and why so
    assert all({"precision", "compile", "compile_reason", "image_steps"} <= set(a) for a in own)
    assert all(a["compile"] == 0 and "config" not in a for a in own)
    assert sorted(report.order()) == sorted(p.stem for p in zoo)
    names = {c.score for c in report.correlations}
    assert "C_minus_R" in names and all(c.models == 5 for c in report.correlations)
    for c in report.correlations:
        assert c.kendall_ci[0] <= c.kendall <= c.kendall_ci[1] or not np.isfinite(c.kendall_ci[0])
    table = rank_table(report)
    assert "models ranked by C_minus_R" in table and "Kendall tau" in table
    assert (tmp_path / "ranked" / "r.work").is_dir()  # kept: a rerun with --fresh starts over


@pytest.mark.slow
def test_a_killed_ranking_reuses_the_models_it_finished(tiny_plugin, zoo, tmp_path, monkeypatch):
    from toolkit import pipeline

    work = tmp_path / "w"
    rank([f"tiny-cnn={p}" for p in zoo[:3]], work_dir=work, **FAST)
    calls = []
    real = pipeline.analyze
    monkeypatch.setattr(pipeline, "analyze", lambda *a, **k: calls.append(k) or real(*a, **k))
    again = rank([f"tiny-cnn={p}" for p in zoo[:3]], work_dir=work, **FAST)
    assert calls == [] and len(again.ds["model"]) == 3
    # compile changes rounding only: not part of the ranking's identity either
    again = rank([f"tiny-cnn={p}" for p in zoo[:3]], work_dir=work, compile=False, **FAST)
    assert calls == [] and len(again.ds["model"]) == 3
    with pytest.raises(toolkit.UsageError, match=r"holds the work of another ranking \(models differ\)"):
        rank([f"tiny-cnn={p}" for p in zoo[1:4]], work_dir=work, **FAST)


@pytest.mark.slow
def test_safetensors_weights_rank_as_their_pt_twin(tiny_plugin, zoo, tmp_path):
    from safetensors.torch import save_file

    twin = tmp_path / "twin.safetensors"
    save_file(torch.load(zoo[-1], weights_only=True), str(twin))
    report = rank([f"tiny-cnn={zoo[-1]}", f"tiny-cnn={twin}"], **FAST)
    scores = report.ds["scores"].values
    np.testing.assert_array_equal(scores[0], scores[1])


def test_bad_weight_files_are_one_line_errors_before_any_work(tiny_plugin, zoo, tmp_path):
    with pytest.raises(toolkit.UsageError, match=r"no weight file at"):
        rank([f"tiny-cnn={tmp_path / 'missing.pt'}"], **FAST)
    with pytest.raises(toolkit.UsageError, match=r"names no model: write MODEL=PATH"):
        rank([str(zoo[0])], **FAST)
    with pytest.raises(toolkit.UsageError, match=r"is not a weight file"):
        rank([f"tiny-cnn={tmp_path}/notes.txt"], **FAST)
    with pytest.raises(toolkit.UsageError, match=r"unknown model 'nonet'"):
        rank([f"nonet={zoo[0]}"], **FAST)
    with pytest.raises(toolkit.UsageError, match=r"rank needs weight files"):
        rank([], **FAST)
    with pytest.raises(toolkit.UsageError, match=r"--seeds must be at most 10000; got 10{23}"):
        rank([f"tiny-cnn={zoo[0]}"], **{**FAST, "seeds": 10 ** 23}, out=tmp_path / "r.nc")
    with pytest.raises(toolkit.UsageError, match=r"--max_steps must be a whole number >= 1"):
        rank([f"tiny-cnn={zoo[0]}"], **{**FAST, "max_steps": 0}, out=tmp_path / "r.nc")
    assert not (tmp_path / "r.nc").exists() and not (tmp_path / "r.work").exists()


@pytest.mark.slow
def test_checkpoints_that_run_code_or_do_not_fit_are_refused(tiny_plugin, zoo, tmp_path):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(bytearray(b"x")))  # a pickled object, not weights
    out = tmp_path / "r.nc"
    with pytest.raises(toolkit.UsageError, match=r"evil.pt|interval-1.pt"):
        rank([f"tiny-cnn={evil}"], out=out, **FAST)
    assert not out.exists()
    wide = tmp_path / "wide.pt"
    torch.save(NormalizedClassifier(TinyCNN(5, 1, 6), (0.5,), (0.2,)).state_dict(), wide)
    with pytest.raises(toolkit.UsageError, match=r"does not fit model 'tiny-cnn' for 3 classes"):
        rank([f"tiny-cnn={wide}"], **FAST)


def test_bootstrap_interval_brackets_a_clear_correlation():
    x = np.arange(20.0)
    low, high = bootstrap_interval(lambda a, b: np.corrcoef(a, b)[0, 1], x, x + 0.1 * np.sin(x))
    assert 0.95 < low <= high <= 1.0


@pytest.mark.slow
def test_rank_reads_the_data_once_for_all_its_models(tiny_plugin, zoo, tmp_path, monkeypatch):
    from toolkit.data import reused, reusing_datasets
    from toolkit.plugins import get_plugin_manager

    loads = []

    class Counting:
        @toolkit.hookimpl
        def register_datasets(self, register):
            register("counted", lambda root, download: loads.append(root) or make_tiny_dataset(),
                     description="the tiny dataset, counting its loads")

    get_plugin_manager().register(Counting(), name="counting-test-plugin")
    try:
        rank([f"tiny-cnn={p}" for p in zoo[:3]], **{**FAST, "dataset": "counted", "max_steps": 2})
        assert len(loads) == 1
        rank([f"tiny-cnn={p}" for p in zoo[:2]], **{**FAST, "dataset": "counted", "max_steps": 2})
        assert len(loads) == 2  # nothing is kept once a ranking ends
    finally:
        get_plugin_manager().unregister(name="counting-test-plugin")
    made = []
    with reusing_datasets():
        first = reused("k", lambda: made.append(1) or make_tiny_dataset())
        with reusing_datasets():  # nested blocks share what the outer one holds
            assert reused("k", lambda: made.append(1) or make_tiny_dataset()) is first
    assert len(made) == 1 and reused("k", make_tiny_dataset) is not first
