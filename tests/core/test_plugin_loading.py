"""How plugins are found, skipped when broken, disabled, and loaded from files (``toolkit plugins``)."""
from __future__ import annotations

import json
import sys
import textwrap
import warnings

import pytest

import toolkit
from toolkit.__main__ import main
from toolkit.plugins import PluginWarning, configure, get_plugin_manager, get_registry
from toolkit.testing import fresh_plugin_manager, register_plugin
from conftest import TinyPlugin


def install(site, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]):
    """A distribution as pip leaves it in site-packages: modules and a dist-info with entry points."""
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "[toolkit]\n" + "".join(f"{name} = {target}\n" for name, target in entry_points.items()))


@pytest.fixture
def no_manager_yet(monkeypatch):
    """The process-wide manager is built by the command under test, then the old one restored."""
    from toolkit import plugins

    monkeypatch.setattr(plugins, "_pm", None)
    monkeypatch.setattr(plugins, "_configured", {"plugins": (), "disable": ()})


BROKEN_MODULES = ("toolkit_broken_import", "toolkit_broken_hook", "toolkit_typo")


@pytest.fixture
def broken_site(tmp_path, monkeypatch):
    """Three installed third-party plugins: one raises on import, one raises in one of its hooks,
    one implements a hook that does not exist."""
    site = tmp_path / "site-packages"
    site.mkdir()
    install(site, "toolkit-broken-import", "0.1", {"broken-import": "toolkit_broken_import"}, {
        "toolkit_broken_import": '''
            raise ImportError("needs the package 'nonesuch', which is not installed")
        '''})
    install(site, "toolkit-broken-hook", "2.0", {"broken-hook": "toolkit_broken_hook"}, {
        "toolkit_broken_hook": '''
            import toolkit

            @toolkit.hookimpl
            def register_models(register):
                raise RuntimeError("model zoo offline")

            @toolkit.hookimpl
            def register_metrics(register):
                register("still-works", lambda ds: {}, description="from a plugin with a broken hook")
        '''})
    install(site, "toolkit-typo", "1.0", {"typo": "toolkit_typo"}, {
        "toolkit_typo": '''
            import toolkit

            @toolkit.hookimpl
            def register_model(register):
                register("never", lambda num_classes, in_chans, image_size: None)
        '''})
    monkeypatch.syspath_prepend(str(site))
    yield site
    for module in BROKEN_MODULES:
        sys.modules.pop(module, None)


def plugins_listing(capsys, *args) -> tuple[dict, str]:
    assert main([*args, "plugins"]) == 0
    captured = capsys.readouterr()
    return {p["name"]: p for p in json.loads(captured.out)}, captured.err


def test_broken_installed_plugins_are_reported_and_skipped(broken_site, capsys, no_manager_yet):
    listed, err = plugins_listing(capsys)
    assert listed["broken-import"]["errors"] == {
        "import": "ImportError: needs the package 'nonesuch', which is not installed"}
    assert listed["broken-import"]["version"] == "0.1"
    assert listed["broken-import"]["hooks"] == [] and listed["broken-import"]["registers"] == {}
    assert listed["broken-hook"]["errors"] == {"register_models": "RuntimeError: model zoo offline"}
    assert listed["broken-hook"]["registers"] == {"metrics": ["still-works"]}
    assert listed["broken-hook"]["hooks"] == ["register_metrics", "register_models"]
    assert listed["typo"]["errors"] == {"import": "PluginError: register_model is not a toolkit "
                                        "hook; hooks: register_models, register_datasets, "
                                        "register_synthesizers, register_metrics, "
                                        "register_probes, register_figures, register_scores"}
    assert "toolkit: warning: plugin 'broken-import' failed to load (ImportError: needs the " \
           "package 'nonesuch', which is not installed); skipped" in err.splitlines()


def test_commands_that_do_not_use_a_broken_plugin_keep_working(broken_site, tmp_path, capsys,
                                                                no_manager_yet):
    out = tmp_path / "r.nc"
    argv = ["analyze", "--model", "tiny-cnn", "--dataset", "tiny", "--intervals", "1",
            "--seeds", "1", "--epochs", "2", "--max_steps", "5", "--metrics", "cosine,still-works",
            "--out", str(out), "--noprogress", "--noplots"]
    with pytest.warns(PluginWarning) as warned:
        get_plugin_manager()
    assert any("plugin 'broken-import' failed to load" in str(w.message) for w in warned)
    with register_plugin(TinyPlugin(), name="tiny-test-plugin"):
        assert main(argv) == 0
    assert out.is_file()
    err = capsys.readouterr().err
    assert err == ("toolkit: warning: plugin 'broken-hook' raised in register_models "
                   "(RuntimeError: model zoo offline); skipped\n")


def test_asking_for_what_a_broken_plugin_would_have_registered_says_why(broken_site):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        with fresh_plugin_manager(), pytest.raises(toolkit.UsageError) as raised:
            get_registry("model").get("zoo-net")
    message = str(raised.value)
    assert message.startswith("unknown model 'zoo-net'; known models: resnet18, resnet18-tv, timm:<name>; ")
    assert "plugin 'broken-import' failed to load (ImportError: needs the package" in message
    assert "plugin 'broken-hook' raised in register_models (RuntimeError: model zoo offline)" in message


def test_a_broken_plugin_warns_when_the_manager_loads_it(broken_site):
    with pytest.warns(PluginWarning) as warned, fresh_plugin_manager() as pm:
        assert pm.get_plugin("broken-import") is None and pm.get_plugin("typo") is None
        assert pm.get_plugin("broken-hook") is not None
    assert sorted(str(w.message).split("'")[1] for w in warned) == ["broken-import", "typo"]


@pytest.mark.parametrize("names", ["broken-import,typo", "toolkit-broken-import,Toolkit_Typo"])
def test_installed_plugins_can_be_disabled_by_plugin_or_distribution_name(
        broken_site, monkeypatch, capsys, no_manager_yet, names):
    monkeypatch.setenv("TOOLKIT_DISABLE_PLUGINS", names)
    listed, err = plugins_listing(capsys)
    # A disabled plugin is not even imported; the hook that raised is the one warning.
    assert err == ("toolkit: warning: plugin 'broken-hook': register_models: RuntimeError: "
                   "model zoo offline\n")
    assert "toolkit_broken_import" not in sys.modules
    for name in ("broken-import", "typo"):
        assert listed[name]["disabled"] is True and listed[name]["errors"] == {}
    assert listed["broken-hook"]["disabled"] is False


def test_the_command_line_disables_plugins_too(broken_site, capsys, no_manager_yet):
    listed, err = plugins_listing(capsys, "--disable_plugins", "broken-import,broken-hook")
    assert get_plugin_manager().disabled == {"broken-import", "broken-hook"}
    assert listed["broken-hook"]["disabled"] and "still-works" not in json.dumps(listed)
    assert "broken-import" not in err and "broken-hook" not in err and "'typo'" in err


def test_a_disabled_builtin_takes_its_registrations_with_it(monkeypatch):
    monkeypatch.setenv("TOOLKIT_DISABLE_PLUGINS", "toolkit_plugins.metrics")
    with fresh_plugin_manager():
        assert get_registry("metric").names() == ["madv", "mg", "noise_confidence", "weight_norm",
                                                  "ww_alpha"]  # the other plugins' stay
        assert get_registry("model").names() == ["resnet18", "resnet18-tv", "timm:"]


PLUGIN_FILE = '''
    import toolkit

    @toolkit.hookimpl
    def register_metrics(register):
        register("{name}", lambda ds: {{}}, description="from a plugin file")
'''


def test_plugin_files_load_without_packaging(tmp_path, monkeypatch, capsys, no_manager_yet):
    (tmp_path / "one.py").write_text(textwrap.dedent(PLUGIN_FILE.format(name="from-env")))
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "two.py").write_text(textwrap.dedent(PLUGIN_FILE.format(name="from-dir")))
    (folder / "_helper.py").write_text("raise RuntimeError('not a plugin: starts with _')\n")
    monkeypatch.setenv("TOOLKIT_PLUGINS", str(tmp_path / "one.py"))
    listed, err = plugins_listing(capsys, "--plugins_dir", str(folder))
    assert {"from-env", "from-dir"} <= set(get_registry("metric").names())
    assert listed[str(tmp_path / "one.py")]["registers"] == {"metrics": ["from-env"]}
    assert listed[str(folder / "two.py")]["registers"] == {"metrics": ["from-dir"]}
    assert err == ""


def test_a_plugin_file_that_raises_is_reported_like_an_installed_one(tmp_path, monkeypatch, capsys,
                                                                      no_manager_yet):
    (tmp_path / "bad.py").write_text("1 / 0\n")
    monkeypatch.setenv("TOOLKIT_PLUGINS", str(tmp_path / "bad.py"))
    listed, err = plugins_listing(capsys)
    assert listed[str(tmp_path / "bad.py")]["errors"] == {"import": "ZeroDivisionError: division by zero"}
    assert err == f"toolkit: warning: plugin {str(tmp_path / 'bad.py')!r} failed to load " \
                  "(ZeroDivisionError: division by zero); skipped\n"


@pytest.mark.parametrize("argv, env, message", [
    (["--plugins_dir", "nowhere", "plugins"], None, "--plugins_dir 'nowhere' is not a folder"),
    (["plugins"], "missing.py", "plugin file 'missing.py' does not exist; TOOLKIT_PLUGINS takes .py"),
    (["plugins"], "setup.cfg", "plugin file 'setup.cfg' is not a .py file"),
    (["plugins", "--hook", "register_model"], None,
     "unknown hook 'register_model'; hooks: register_models, register_datasets"),
])
def test_bad_plugin_options_are_one_line_errors(tmp_path, monkeypatch, capsys, no_manager_yet,
                                                argv, env, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "setup.cfg").write_text("")
    if env:
        monkeypatch.setenv("TOOLKIT_PLUGINS", env)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("toolkit: error: ") and err.count("\n") == 1
    assert message in err


def test_hook_option_lists_only_the_plugins_implementing_it(capsys):
    assert main(["plugins", "--all", "--hook", "register_datasets"]) == 0
    names = [p["name"] for p in json.loads(capsys.readouterr().out)]
    assert names == ["toolkit_plugins.datasets", "toolkit_plugins.imagefolder"]
    with register_plugin(TinyPlugin(), name="tiny-test-plugin"):
        assert main(["plugins", "--hook", "register_metrics"]) == 0
        assert [p["name"] for p in json.loads(capsys.readouterr().out)] == ["tiny-test-plugin"]
        assert main(["plugins", "--hook", "register_synthesizers"]) == 0
        assert json.loads(capsys.readouterr().out) == []


def test_python_api_lists_what_the_command_prints(capsys):
    assert main(["plugins", "--all"]) == 0
    assert json.loads(capsys.readouterr().out) == toolkit.get_plugins(all=True)


def test_configure_rebuilds_the_manager_and_fresh_plugin_manager_restores_it(tmp_path):
    (tmp_path / "extra.py").write_text(textwrap.dedent(PLUGIN_FILE.format(name="configured")))
    before = get_plugin_manager()
    with fresh_plugin_manager():
        configure(plugins=[str(tmp_path / "extra.py")])
        assert "configured" in get_registry("metric")
    assert get_plugin_manager() is before
    assert "configured" not in get_registry("metric")


class BadRegistrations:
    __name__ = "bad-registrations"

    @toolkit.hookimpl
    def register_datasets(self, register):
        register("fine-so-far", lambda root, download: None)
        register("not-callable", 42)


def test_a_hook_breaking_the_register_contract_is_skipped_whole():
    with register_plugin(BadRegistrations()):
        with pytest.warns(PluginWarning, match="plugin 'bad-registrations' raised in register_datasets "
                                               r"\(PluginError: plugin 'bad-registrations' registered "
                                               r"dataset 'not-callable' that is not callable\)"):
            datasets = get_registry("dataset")
    assert "fine-so-far" not in datasets and "digits" in datasets


def test_register_plugin_restores_the_manager_even_when_the_test_fails():
    pm = get_plugin_manager()
    before = dict(pm.list_name_plugin())
    with pytest.raises(RuntimeError):
        with register_plugin(TinyPlugin()) as name:
            assert name == "tiny-test-plugin" and "tiny" in get_registry("dataset")
            raise RuntimeError("the test failed")
    assert dict(pm.list_name_plugin()) == before
    with register_plugin(TinyPlugin()):
        with pytest.raises(ValueError, match="a plugin named 'tiny-test-plugin' is already registered"):
            with register_plugin(TinyPlugin()):
                pass


def test_register_plugin_stands_in_for_an_installed_copy_of_the_same_module(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "toolkit-mine", "0.3", {"mine": "toolkit_mine"},
            {"toolkit_mine": PLUGIN_FILE.format(name="mine-metric")})
    monkeypatch.syspath_prepend(str(site))
    try:
        with fresh_plugin_manager() as pm:
            import toolkit_mine

            with register_plugin(toolkit_mine) as name:
                assert name == "toolkit_mine" and pm.get_plugin("mine") is None
                assert get_registry("metric").get("mine-metric").plugin == "toolkit_mine"
            assert get_registry("metric").get("mine-metric").plugin == "mine"
    finally:
        sys.modules.pop("toolkit_mine", None)
