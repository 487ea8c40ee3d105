"""Tests of the example plugin: each registered object against its contract, then a whole study.

Run them with ``pytest`` in this folder, with the plugin installed (``pip install -e '.[test]'``)
or not: ``register_plugin`` registers the module for each test either way.
"""
import pytest
import torch

import toolkit
import toolkit_plugin_example as example
from toolkit.plugins import get_registry
from toolkit.testing import make_results, register_plugin, run_metrics


@pytest.fixture(autouse=True)
def plugin():
    with register_plugin(example):
        yield


def test_everything_is_registered_under_its_name():
    assert get_registry("model").get("example-mlp").obj is example.MLP
    assert get_registry("dataset").get("example-shapes").metadata["defaults"]["epochs"] == 6
    assert "example-signed" in get_registry("synthesizer")
    assert "example-feature-norm" in get_registry("metric")
    assert "example-brightness" in get_registry("probe")
    assert "example-feature-norm" in get_registry("figure")
    assert "example-feature-norm" in get_registry("score")


def test_the_model_follows_timms_feature_protocol():
    model = example.MLP(num_classes=4, in_chans=1, image_size=8)
    x = torch.rand(5, 1, 8, 8)
    features = model.forward_features(x)
    assert model.forward_head(features, pre_logits=True).shape == (5, 32)
    assert model.forward_head(features).shape == (5, 4)
    assert torch.equal(model(x), model.forward_head(features))


def test_the_dataset_is_a_valid_deterministic_image_dataset(tmp_path):
    data = example.load_shapes(tmp_path, download=False)
    assert data.class_names == example.SHAPES
    assert data.train_images.shape == (160, 1, 8, 8) and data.train_images.dtype == torch.uint8
    assert torch.equal(data.train_images, example.load_shapes(tmp_path, False).train_images)
    assert list(tmp_path.iterdir()) == []   # nothing written


def test_the_synthesizer_pushes_images_into_their_targets():
    torch.manual_seed(0)
    model = example.MLP(4, 1, 8).eval().requires_grad_(False)
    start = torch.rand(6, 1, 8, 8)
    original = start.clone()
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    settings = toolkit.SynthesisSettings(lr=0.5, loss_threshold=0.05, max_steps=200, batch_size=4)
    finished = []
    result = example.signed_gradient(model, start, targets, settings, progress=finished.append)
    checked = result.check(start, "example-signed")        # the toolkit's own contract check
    assert sum(finished) == 6
    assert 0 <= float(checked.images.min()) and float(checked.images.max()) <= 1
    # an untrained model cannot be pushed to 95 % confidence, but each image moves into its class
    assert (checked.predicted == targets).all()
    before = torch.nn.functional.cross_entropy(model(start), targets, reduction="none")
    assert (checked.loss < before).all()
    assert torch.equal(checked.converged, checked.loss < settings.loss_threshold)
    assert (checked.steps > 0).all() and (checked.steps <= 200).all()
    assert torch.equal(start, original) and not torch.equal(checked.images, start)


def test_the_synthesizer_takes_exactly_fixed_steps():
    model = example.MLP(4, 1, 8).eval().requires_grad_(False)
    settings = toolkit.SynthesisSettings(lr=0.1, fixed_steps=7, batch_size=8)
    result = example.signed_gradient(model, torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2]), settings)
    assert result.steps.tolist() == [7, 7, 7]


def test_the_metric_runs_after_the_builtin_ones():
    ds = run_metrics(make_results(), "cosine,zscore,example-feature-norm")
    assert ds["feature_norm"].dims == ("interval", "seed")
    only = run_metrics(make_results(), ["example-feature-norm"],
                       {"example-feature-norm": {"over": "prototypes"}})
    assert (only["feature_norm"] != ds["feature_norm"]).any()
    with pytest.raises(toolkit.UsageError, match="option over must be one of grid, prototypes"):
        run_metrics(make_results(), "example-feature-norm", {"example-feature-norm": {"over": "all"}})


def test_a_whole_study_with_every_part_from_the_plugin(tmp_path):
    ds = toolkit.analyze(model="example-mlp", dataset="example-shapes", synthesizer="example-signed",
                         metrics="cosine,zscore,example-feature-norm", intervals=[1.0], seeds=1,
                         out=tmp_path / "r.nc")
    assert ds.sizes["k"] == 4 and ds.sizes["feature"] == 32
    assert float(ds["test_accuracy"][-1]) > 0.8
    assert (ds["feature_norm"] > 0).all()
    assert ds["brightness"].dims == ("interval", "seed", "k", "j")
    assert ds["brightness"].attrs["long_name"] == "mean pixel of P[k, j]"
    with toolkit.open_results(tmp_path / "r.nc") as saved:
        assert "feature_norm" in saved and "brightness" in saved
    written = toolkit.plot(ds, tmp_path / "figures", figures="example-feature-norm")
    assert [p.name for p in written] == ["example-feature-norm.png"]
    page = toolkit.report(ds, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Feature norm over training" in page
    quality = toolkit.quality([ds, ds], labels=["a", "b"])
    assert "example-feature-norm" in {c.score for c in quality.correlations}
