"""The plugin manager: registries, clashes, and a real entry-point plugin."""
import json
import sys
import textwrap

import pluggy
import pytest

import toolkit
from toolkit import hookspecs
from toolkit.plugins import get_registry
from toolkit.testing import register_plugin


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(toolkit.UsageError, match="unknown metric 'x'; known metrics: cosine, cosine_summaries, madv, mg, noise_confidence, weight_norm, ww_alpha, zscore"):
        get_registry("metric").get("x")


def test_registrations_know_their_plugin_and_metadata():
    digits = get_registry("dataset").get("digits")
    assert digits.plugin == "toolkit_plugins.datasets"
    assert digits.metadata["defaults"]["flip"] is False
    assert "offline" in digits.description


def test_prefix_models_resolve_any_timm_architecture():
    reg = get_registry("model").get("timm:resnet10t")
    model = reg.obj(num_classes=4, in_chans=1, image_size=32)
    import torch

    x = torch.rand(2, 1, 32, 32)
    assert model.forward_head(model.forward_features(x)).shape == (2, 4)
    with pytest.raises(toolkit.UsageError, match="timm has no architecture 'nonesuch'"):
        get_registry("model").get("timm:nonesuch")


class Clash:
    __name__ = "clash"

    @toolkit.hookimpl
    def register_metrics(self, register):
        register("cosine", lambda ds: {})


def test_a_name_registered_twice_names_both_plugins_and_other_names_still_work():
    with register_plugin(Clash(), name="clash"):
        metrics = get_registry("metric")
        with pytest.raises(toolkit.PluginError, match="'cosine' is registered by both "
                                                      "'toolkit_plugins.metrics' and 'clash'"):
            metrics.get("cosine")
        assert metrics.get("zscore").plugin == "toolkit_plugins.metrics"


class Raising:
    __name__ = "raising"

    @toolkit.hookimpl
    def register_scores(self, register):
        raise RuntimeError("no scores today")


def test_plugins_flags_a_clash_on_both_sides_and_warns_of_a_hook_that_raised(capsys):
    from toolkit.cli import Toolkit

    with register_plugin(Clash(), name="clash"), register_plugin(Raising(), name="raising"):
        Toolkit().plugins(all=True)
    out, err = capsys.readouterr()
    listed = {entry["name"]: entry for entry in json.loads(out)}
    assert "also registered by 'toolkit_plugins.metrics'" in listed["clash"]["errors"]["metric cosine"]
    assert "also registered by 'clash'" in listed["toolkit_plugins.metrics"]["errors"]["metric cosine"]
    for side in ("clash", "toolkit_plugins.metrics"):  # and listed on both sides as registering it
        assert "cosine" in listed[side]["registers"]["metrics"], side
    assert "register_scores" in json.dumps(listed["raising"]["errors"])
    assert "warning: plugin 'raising'" in err and "no scores today" in err
    assert "warning: plugin 'clash'" in err


def test_every_hook_has_a_docstring():
    for name in hookspecs.hook_names():
        assert getattr(hookspecs, name).__doc__.strip(), name
    assert hookspecs.hook_names() == ["register_models", "register_datasets",
                                      "register_synthesizers", "register_metrics",
                                      "register_probes", "register_figures", "register_scores"]


def test_a_plugin_installed_through_the_entry_point_group_is_loaded(tmp_path, monkeypatch):
    """A distribution on sys.path whose entry point names a module, as pip would install it."""
    (tmp_path / "toolkit_extra.py").write_text(textwrap.dedent('''
        import toolkit

        @toolkit.hookimpl
        def register_synthesizers(register):
            register("noop", lambda model, start, targets, settings, progress=None: None,
                     description="does nothing")
    '''))
    info = tmp_path / "toolkit_extra-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toolkit-extra\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[toolkit]\nextra = toolkit_extra\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = pluggy.PluginManager("toolkit")
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints("toolkit")
    noop = get_registry("synthesizer", pm).get("noop")
    assert noop.plugin == "extra"
    from toolkit.plugins import describe_plugins

    assert describe_plugins(pm)[0]["version"] == "1.2.3"
    sys.modules.pop("toolkit_extra", None)


@pytest.mark.parametrize("kind, obj, metadata, message", [
    ("probe", lambda *a: {}, {}, "registered probe 'x' that is not a toolkit.Probe"),
    ("figure", lambda ds: None, {}, "registered figure 'x' that is not a toolkit.FigureSpec"),
    ("score", lambda ds: None, {}, "registered score 'x' that is not a toolkit.Score"),
    ("metric", lambda ds: {}, {"variables": {"v": ("interval",)}},
     "registered metric 'x' with variables that are not a dict of names to toolkit.Variable"),
    ("metric", lambda ds: {}, {"probe": lambda *a: {}},
     "registered metric 'x' with probe= that is not the name of a probe"),
])
def test_typed_registrations_are_checked(kind, obj, metadata, message):
    from toolkit.registry import registrar

    with pytest.raises(toolkit.PluginError, match=message):
        registrar(kind, "p", {})("x", obj, **metadata)
