"""Every hook is documented and exercised (as datasette's test_plugin_hooks_are_documented).

One study runs with a plugin that implements every hook and records what the toolkit hands each
registered object; the ``test_hook_<name>`` tests check those against the documented contract.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import xarray as xr

import toolkit
from toolkit import hookdocs, hookspecs
from toolkit.testing import register_plugin
from conftest import TinyCNN, make_tiny_dataset

ROOT = Path(__file__).resolve().parents[2]
HOOKS = hookspecs.hook_names()


def test_the_hook_reference_is_generated_from_the_hookspecs_and_up_to_date():
    page = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
    assert page == hookdocs.render(), "docs/hooks.md is stale: python -m toolkit.hookdocs docs/hooks.md"
    assert re.findall(r"^## (\w+)$", page, flags=re.M) == HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    assert getattr(hookspecs, hook).__doc__.strip()
    assert f"`{hook}`" in (ROOT / "docs" / "writing-plugins.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    assert callable(globals().get(f"test_hook_{hook}")), f"add test_hook_{hook} to {__file__}"


def test_the_example_plugin_implements_every_hook():
    source = (ROOT / "examples" / "toolkit-plugin-example" / "toolkit_plugin_example"
              / "__init__.py").read_text(encoding="utf-8")
    assert re.findall(r"@toolkit.hookimpl\ndef (\w+)\(register\)", source) == HOOKS


class Recorder:
    """Registers one of each kind around the tiny test objects, recording every call."""

    __name__ = "recorder"

    def __init__(self):
        self.calls: dict[str, list] = {}

    def _record(self, kind, **seen):
        self.calls.setdefault(kind, []).append(seen)

    @toolkit.hookimpl
    def register_models(self, register):
        def factory(*args, **kwargs):
            self._record("model", args=args, kwargs=kwargs, seed_state=torch.random.get_rng_state())
            net = TinyCNN(*args, **kwargs)
            original = net.forward_features

            def forward_features(x):
                self._record("model_input", min=float(x.detach().min()))
                return original(x)

            net.forward_features = forward_features
            return net

        register("rec-model", factory, description="recording TinyCNN")

    @toolkit.hookimpl
    def register_datasets(self, register):
        def loader(root, download):
            self._record("dataset", root=root, download=download)
            return make_tiny_dataset()

        register("rec-data", loader, defaults={"lr": 0.5, "epochs": 8})

    @toolkit.hookimpl
    def register_synthesizers(self, register):
        from toolkit_plugins.synthesis import prototype

        def synthesizer(model, start, targets, settings, progress=None):
            self._record("synthesizer", training=model.training,
                         grads=[p.requires_grad for p in model.parameters()],
                         start=start.clone(), targets=targets.clone(), settings=settings,
                         progress=progress)
            return prototype(model, start, targets, settings, progress)

        register("rec-synth", synthesizer)

    @toolkit.hookimpl
    def register_metrics(self, register):
        def metric(ds, scale=1.0):
            self._record("metric", variables=set(ds.variables), dims=dict(ds.sizes), scale=scale)
            return {"scaled_c": (ds["C_mean"] * scale).assign_attrs(long_name="C mean, scaled", units="1")}

        register("rec-metric", metric, check_options=lambda scale=1.0: self._record("check", scale=scale),
                 probe="rec-probe", variables={"scaled_c": toolkit.Variable(
                     ("interval",), {"long_name": "C mean, scaled", "units": "1"})})

    @toolkit.hookimpl
    def register_probes(self, register):
        def run(model, grid, records, settings, *, rows=None, prototypes=None):
            self._record("probe", shape=tuple(grid.shape), rows=rows, training=model.training,
                         records=set(records), settings=settings,
                         prototypes=None if prototypes is None else tuple(prototypes.shape))
            return {"row_brightness": grid.mean((2, 3, 4, 5))}
        register("rec-probe", toolkit.Probe(run, {"row_brightness": toolkit.Variable(
            ("interval", "seed", "k"), {"long_name": "mean pixel of each row of P", "units": "1"})},
            blocks=True))

    @toolkit.hookimpl
    def register_figures(self, register):
        def draw(ds, seed=None):
            from toolkit.plotting import MissingData, new_figure

            if "scaled_c" not in ds:
                raise MissingData("this file lacks scaled_c; run the rec-metric metric")
            self._record("figure", variables=set(ds.variables), seed=seed)
            fig = new_figure(3, 2)
            fig.add_subplot().plot(ds["interval"].values, ds["scaled_c"].values)
            return fig
        register("rec-figure", toolkit.FigureSpec(draw, "Scaled C", "The mean of C, tripled.",
                                                  needs=("scaled_c",), optional=True))

    @toolkit.hookimpl
    def register_scores(self, register):
        register("rec-score", toolkit.Score(lambda ds: ds["scaled_c"].values * 1.0, ("scaled_c",),
                                            +1, "C mean, so as C mean"))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    recorder = Recorder()
    root = tmp_path_factory.mktemp("data")
    with register_plugin(recorder):
        ds = toolkit.analyze(model="rec-model", dataset="rec-data", synthesizer="rec-synth",
                             metrics="cosine,zscore,rec-metric", metric_options={"rec-metric": {"scale": 3}},
                             intervals=(1.0,), seeds=2, seed_start=4, train_lr=0.1, train_batch_size=16,
                             max_steps=15, batch_size=4, data_root=str(root), download=False)
    return recorder.calls, ds, root


def test_hook_register_models(study):
    calls, ds, _ = study
    (built,) = calls["model"]
    assert built["args"] == (3, 1, 6) and all(type(a) is int for a in built["args"])
    assert torch.equal(built["seed_state"], torch.Generator().manual_seed(4).get_state())
    # the model sees normalised inputs (the toolkit normalises), not [0, 1] pixels
    assert min(call["min"] for call in calls["model_input"]) < 0
    assert ds.sizes["feature"] == 16   # forward_head(pre_logits=True) is what C and R compare


def test_hook_register_datasets(study):
    calls, ds, root = study
    assert calls["dataset"] == [{"root": root, "download": False}]
    assert isinstance(calls["dataset"][0]["root"], Path)
    assert list(ds["class_name"].values) == ["bar0", "bar1", "bar2"]
    assert json.loads(ds.attrs["config"])["lr"] == 0.5                # the dataset's default


def test_hook_register_synthesizers(study):
    calls, ds, _ = study
    runs = calls["synthesizer"]
    # the prototypes of both seeds (2 x 3 images fill a micro-batch of 4), then each seed's grid
    # (its 9 images fill one too)
    assert len(runs) == 3
    prototypes, grid = runs[0], runs[1]
    for run in runs:
        assert run["training"] is False and not any(run["grads"])
        assert run["start"].dtype == torch.float32 and run["targets"].dtype == torch.int64
        assert 0 <= float(run["start"].min()) and float(run["start"].max()) <= 1
        assert isinstance(run["settings"], toolkit.SynthesisSettings) and run["settings"].max_steps == 15
        assert callable(run["progress"])
    assert prototypes["start"].shape == (2 * 3, 1, 6, 6)            # the classes, from noise
    assert prototypes["targets"].tolist() == [0, 1, 2, 0, 1, 2]
    assert grid["start"].shape == (3 * 2, 1, 6, 6)                  # the off-diagonal P[k, j]
    assert grid["targets"].tolist() == [0, 0, 1, 1, 2, 2]
    assert ds["steps"].dims == ("interval", "seed", "k", "j")


def test_hook_register_metrics(study):
    calls, ds, _ = study
    assert calls["check"] == [{"scale": 3}]                          # before training
    trial, real = calls["metric"]                                    # the trial run, then the study
    assert trial["dims"] == {"interval": 2, "seed": 2, "k": 3, "j": 3, "feature": 4, "class": 3, "i": 3}
    assert {"features", "steps", "C", "R", "C_mean", "test_accuracy"} <= real["variables"]
    assert real["scale"] == 3
    xr.testing.assert_allclose(ds["scaled_c"], ds["C_mean"] * 3)
    assert ds["scaled_c"].attrs["long_name"] == "C mean, scaled"


def test_hook_register_probes(study):
    calls, ds, _ = study
    runs = calls["probe"]                        # one interval: each piece of its grids
    assert sum(run["shape"][0] for run in runs) == 2          # both seeds, whole grids
    for run in runs:
        assert run["shape"][1:] == (3, 3, 1, 6, 6) and run["rows"] == range(0, 3)
        assert run["prototypes"] == (run["shape"][0], 3, 1, 6, 6) and run["training"] is False
        assert run["records"] == {"steps", "loss", "converged", "predicted", "confidence"}
        assert isinstance(run["settings"], toolkit.SynthesisSettings)
    assert ds["row_brightness"].dims == ("interval", "seed", "k")
    assert ds["row_brightness"].attrs == {"long_name": "mean pixel of each row of P", "units": "1"}


@pytest.mark.slow
def test_hook_register_figures(study, tmp_path):
    _, ds, _ = study
    recorder = Recorder()
    with register_plugin(recorder):
        written = toolkit.plot(ds, tmp_path / "figures", figures="rec-figure", seed=5)
        assert [p.name for p in written] == ["rec-figure.png"]
        (drawn,) = recorder.calls["figure"]
        assert drawn["seed"] == 5 and "scaled_c" in drawn["variables"]
        page = toolkit.report(ds, tmp_path / "r.html").read_text(encoding="utf-8")
        assert "Scaled C" in page and "The mean of C, tripled." in page
        # optional: a file without its data skips it without a word
        written = toolkit.plot(ds.drop_vars("scaled_c"), tmp_path / "other")
        assert "rec-figure.png" not in [p.name for p in written]


def test_hook_register_scores(study):
    _, ds, _ = study
    with register_plugin(Recorder()):
        report = toolkit.quality([ds, ds.assign(test_accuracy=ds["test_accuracy"] * 0.5)],
                                 labels=["a", "b"])
    (score,) = [c for c in report.correlations if c.score == "rec-score" and c.scope == "all"]
    assert score.expected == 1 and score.points == 2
