"""Whole studies on tiny data: through the CLI to a netCDF file, and from Python."""
import json

import numpy as np
import pytest
import torch
import xarray as xr

import toolkit
from toolkit import results
from toolkit.__main__ import main
from toolkit.model import NormalizedClassifier
from conftest import TINY_RUN, TinyCNN, make_tiny_dataset


def cli_args(options: dict) -> list[str]:
    args = []
    for key, value in options.items():
        value = ",".join(map(str, value)) if isinstance(value, tuple) else value
        args += [f"--{key}", str(value)]
    return args


@pytest.mark.slow
def test_cli_writes_a_complete_labelled_results_file(tmp_path, capsys, tiny_plugin):
    out = tmp_path / "tiny.nc"
    argv = ["analyze", *cli_args(TINY_RUN), "--metrics", "cosine,zscore,gap",
            "--metric_options", '{"gap": {"scale": 2}}', "--out", str(out), "--noprogress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"results: {out}" in printed and "tiny-cnn on tiny: 3 classes, 2 seeds" in printed

    with xr.open_dataset(out) as ds:
        assert dict(ds.sizes) == {"interval": 2, "seed": 2, "k": 3, "j": 3, "i": 3, "feature": 16,
                                  "class": 3, "channel": 1, "y": 6, "x": 6}
        for name, dims in {**results.REQUIRED, **results.FROM_METRICS, **results.IMAGES}.items():
            assert ds[name].dims == dims, name
        assert ds["gap"].dims == ("interval", "seed")
        assert list(ds["interval"].values) == [0.5, 1.0]
        assert list(ds["seed"].values) == [0, 1]
        assert list(ds["class_name"].values) == ["bar0", "bar1", "bar2"]
        config = json.loads(ds.attrs["config"])
        assert config["lr"] == 0.5 and config["epochs"] == 25  # the dataset's default, the user's
        assert ds.attrs["Conventions"] == "CF-1.8" and ds.attrs["toolkit_version"] == toolkit.__version__
        assert json.loads(ds.attrs["library_versions"])["torch"] == torch.__version__
        assert ds.attrs["created_at"].endswith("+00:00")
        # what the file says about each image holds: converged images classify as their target
        converged = ds["converged"].values
        targets = np.broadcast_to(ds["k"].values[:, None], converged.shape)
        assert converged.mean() > 0.5
        assert (ds["predicted"].values[converged] == targets[converged]).all()
        assert (ds["loss"].values[converged] < 0.01).all()
        assert (ds["steps"].values <= TINY_RUN["max_steps"]).all()
        # the gap metric was run after cosine, with its option
        want = 2 * (ds["C"].mean(("k", "j", "i")) - ds["R"].mean(("k", "j", "i")))
        np.testing.assert_allclose(ds["gap"].values, want.values, rtol=1e-5)
        assert ((ds["C"] >= 0) & (ds["C"] <= 2)).all()
        assert float(ds["test_accuracy"][-1]) > 0.9

    kept = sorted(p.name for p in (tmp_path / "tiny.work").iterdir())
    assert kept == ["interval-0.5.pt", "interval-1.pt", "run.json"]  # the units are in the file
    assert main(["summary", str(out)]) == 0
    table = capsys.readouterr().out
    assert "C_mean" in table and "100%" in table


@pytest.mark.slow
def test_checkpoint_reproduces_the_recorded_predictions(tmp_path, tiny_plugin):
    out = tmp_path / "r.nc"
    ds = toolkit.analyze(out=out, work_dir=tmp_path / "work", **{**TINY_RUN, "seeds": 1})
    state = torch.load(tmp_path / "work" / "interval-1.pt", weights_only=True)["model"]
    data = make_tiny_dataset()
    model = NormalizedClassifier(TinyCNN(3, 1, 6), data.mean, data.std)
    model.load_state_dict(state)
    model.eval()
    correct = (model(data.test_images.float() / 255).argmax(1) == data.test_labels).float().mean()
    assert float(correct) == pytest.approx(float(ds["test_accuracy"][-1]))


@pytest.mark.slow
def test_python_api_is_deterministic_and_writes_nothing_without_out(tmp_path, monkeypatch, tiny_plugin):
    monkeypatch.chdir(tmp_path)
    a = toolkit.analyze(**TINY_RUN)
    b = toolkit.analyze(toolkit.AnalysisConfig(**TINY_RUN))
    assert list(tmp_path.iterdir()) == []
    xr.testing.assert_equal(a.drop_attrs() if hasattr(a, "drop_attrs") else a[list(a.data_vars)],
                            b.drop_attrs() if hasattr(b, "drop_attrs") else b[list(b.data_vars)])
    assert "interval" in toolkit.summary(a)


@pytest.mark.slow
def test_epochs_schedule_probes_one_run_on_all_the_data(tiny_plugin):
    ds = toolkit.analyze(**{**TINY_RUN, "schedule": "epochs", "seeds": 1, "metrics": "cosine"})
    assert list(ds["train_size"].values) == [72, 72]
    assert "C_mean" not in ds and "C" in ds
    assert "-" in toolkit.summary(ds)  # columns of metrics that did not run
    results.validate(ds)  # a file without the summaries is still a results file


def test_metric_chain_that_cannot_run_fails_before_training(tiny_plugin, monkeypatch):
    from toolkit.stages import train

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(train, "Trainer", no_training)
    with pytest.raises(toolkit.UsageError, match="zscore needs variable 'C'; list a metric that makes it"):
        toolkit.analyze(**{**TINY_RUN, "metrics": "zscore,cosine"})
    with pytest.raises(toolkit.UsageError, match="zscore needs variable 'X'"):
        toolkit.analyze(**{**TINY_RUN, "metric_options": {"zscore": {"variables": ["X"]}}})


class Broken:
    __name__ = "broken"

    @toolkit.hookimpl
    def register_datasets(self, register):
        register("broken", lambda root, download: toolkit.ImageDataset(
            "b", torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), ("a", "b")))
        register("odd-defaults", lambda root, download: make_tiny_dataset(),
                 defaults={"loss_threshold": 0.5})

    @toolkit.hookimpl
    def register_models(self, register):
        register("explodes", lambda num_classes, in_chans, image_size: 1 / 0)


@pytest.mark.parametrize("options, message", [
    (dict(dataset="broken"), "dataset 'broken' (plugin 'broken') failed to load: ValueError: b: train_images"),
    (dict(dataset="odd-defaults"), "dataset 'odd-defaults' gives defaults for loss_threshold; datasets may set"),
    (dict(model="explodes"), "model 'explodes' (plugin 'broken') cannot be built for 3 classes of 1x6x6"),
])
def test_plugin_failures_are_one_line_errors(tiny_plugin, options, message, capsys, tmp_path):
    from toolkit.plugins import get_plugin_manager

    pm = get_plugin_manager()
    pm.register(Broken(), name="broken")
    try:
        argv = ["analyze", *cli_args({**TINY_RUN, **options}), "--out", str(tmp_path / "r.nc"),
                "--noprogress"]
        assert main(argv) == 2
    finally:
        pm.unregister(name="broken")
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_main_job_on_digits_with_resnet18(tmp_path, capsys):
    """The README's main job, shortened: ResNet18 on the bundled digits, really trained."""
    out = tmp_path / "digits.nc"
    argv = ["analyze", "--model", "resnet18", "--dataset", "digits", "--intervals", "0.5,1",
            "--seeds", "1", "--epochs", "2", "--max_steps", "15", "--out", str(out), "--noprogress"]
    assert main(argv) == 0
    with toolkit.open_results(out) as ds:
        assert ds.sizes["k"] == 10 and ds.sizes["feature"] == 512
        assert ds["features"].dims == ("interval", "seed", "k", "j", "feature")
        assert np.isfinite(ds["C"].values).all()
        assert float(ds["test_accuracy"][-1]) > 0.5
