"""The plugin manager and the registries built from its hooks.

Built-in plugins (``DEFAULT_PLUGINS``) are registered first, exactly like third-party ones, then
every module named in the entry-point group ``toolkit`` (as ``datasette/plugins.py`` and
``llm/plugins.py`` do), then plugin files named by ``TOOLKIT_PLUGINS`` or :func:`configure`. The
manager is created on first use, so importing the toolkit stays cheap.

A third-party plugin that fails to import, or whose hook raises, is skipped with a
:class:`PluginWarning` and reported by ``toolkit plugins``; everything else keeps working.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pluggy

from toolkit import contracts, hookspecs
from toolkit.errors import PluginError, UsageError

DEFAULT_PLUGINS = (
    "toolkit_plugins.models",
    "toolkit_plugins.datasets",
    "toolkit_plugins.imagefolder",
    "toolkit_plugins.synthesis",
    "toolkit_plugins.metrics",
    "toolkit_plugins.figures",
    "toolkit_plugins.boundary",
    "toolkit_plugins.scores",
    "toolkit_plugins.grids",
    "toolkit_plugins.baselines",
)

ENTRY_POINT_GROUP = "toolkit"

# The kinds of things plugins register, keyed by the word used in messages and in `toolkit plugins`.
KINDS = {
    "model": "register_models",
    "dataset": "register_datasets",
    "synthesizer": "register_synthesizers",
    "metric": "register_metrics",
    "probe": "register_probes",
    "figure": "register_figures",
    "score": "register_scores",
}
# The kinds whose registered object is one of the typed contracts, not a callable.
TYPED = {"probe": contracts.Probe, "figure": contracts.FigureSpec, "score": contracts.Score}

_pm: PluginManager | None = None
# Set by configure() (the command line's --plugins_dir and --disable_plugins); added to the
# environment's TOOLKIT_PLUGINS and TOOLKIT_DISABLE_PLUGINS.
_configured: dict[str, tuple[str, ...]] = {"plugins": (), "disable": ()}


class PluginWarning(UserWarning):
    """A plugin was skipped because it failed to load or its hook raised."""


@dataclasses.dataclass(frozen=True)
class PluginFailure:
    """Why a plugin, or one of its hooks, is not in use."""

    plugin: str
    stage: str  # "import" or the name of the hook that raised
    error: str  # "ExceptionType: message"

    def __str__(self) -> str:
        where = "failed to load" if self.stage == "import" else f"raised in {self.stage}"
        return f"plugin {self.plugin!r} {where} ({self.error})"


class PluginManager(pluggy.PluginManager):
    """pluggy's manager for the ``toolkit`` hooks, which also remembers the plugins it skipped.

    Attributes:
        failures: plugin name -> :class:`PluginFailure` for plugins that could not be loaded.
        disabled: names of the plugins left out on request.
        versions: plugin name -> version of the distribution that installed it.
    """

    def __init__(self) -> None:
        super().__init__("toolkit")
        self.add_hookspecs(hookspecs)
        self.failures: dict[str, PluginFailure] = {}
        self.disabled: set[str] = set()
        self.versions: dict[str, str] = {}

    def load_plugin(self, load: Callable[[], Any], name: str) -> None:
        """Run ``load()``, which registers plugin ``name``, then check its hooks with pluggy's
        ``check_pending`` (this plugin's alone: every plugin before it passed); record and warn if
        either fails, leaving the plugin out."""
        try:
            load()
            try:
                self.check_pending()
            except pluggy.PluginValidationError:
                plugin = self.get_plugin(name)
                unknown = [h.name for h in self.get_hookcallers(plugin) or () if not h.has_spec()]
                raise PluginError(f"{', '.join(unknown)} is not a toolkit hook; hooks: "
                                  f"{', '.join(hookspecs.hook_names())}") from None
        except Exception as exc:  # a broken plugin must not take the toolkit down with it
            if self.get_plugin(name) is not None:  # pluggy may have added some hooks before failing
                self.unregister(name=name)
            self.record_failure(PluginFailure(name, "import", one_line(exc)))

    def record_failure(self, failure: PluginFailure) -> None:
        self.failures[failure.plugin] = failure
        warnings.warn(f"{failure}; skipped", PluginWarning, stacklevel=2)


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, created (and plugins loaded) on first call.

    Environment variables (read when the manager is created):

    - ``TOOLKIT_PLUGINS``: comma-separated plugin files (``.py``) or folders of them to load as
      plugins without packaging them;
    - ``TOOLKIT_DISABLE_PLUGINS``: comma-separated plugin names (as ``toolkit plugins`` shows
      them) or distribution names not to load;
    - ``TOOLKIT_LOAD_ENTRYPOINTS=0``: skip every installed third-party plugin.
    """
    global _pm
    if _pm is None:
        _pm = _create_plugin_manager(
            plugins=_split(os.environ.get("TOOLKIT_PLUGINS")) + _configured["plugins"],
            disable=_split(os.environ.get("TOOLKIT_DISABLE_PLUGINS")) + _configured["disable"],
            entry_points=os.environ.get("TOOLKIT_LOAD_ENTRYPOINTS", "1") != "0")
    return _pm


def configure(*, plugins: str | Iterable[str] | None = None, plugins_dir: str | None = None,
              disable: str | Iterable[str] | None = None) -> None:
    """Choose extra plugin files and plugins to leave out, for the rest of this process.

    The process-wide manager is rebuilt on its next use; the environment's ``TOOLKIT_PLUGINS``
    and ``TOOLKIT_DISABLE_PLUGINS`` still apply. Each call replaces the settings of the last.

    Args:
        plugins: plugin files (``.py``) or folders of them, a list or comma-separated.
        plugins_dir: a folder whose ``*.py`` files are each loaded as a plugin.
        disable: plugin or distribution names not to load, a list or comma-separated.

    Raises:
        UsageError: a file or folder that does not exist, or a file that is not ``.py``.
    """
    global _pm
    if plugins_dir is not None and not Path(plugins_dir).expanduser().is_dir():
        raise UsageError(f"--plugins_dir {str(plugins_dir)!r} is not a folder")
    files = _split(plugins) + ((str(plugins_dir),) if plugins_dir is not None else ())
    for path in files:
        _plugin_files(path)  # fail now, at the option that is wrong
    _configured["plugins"] = files
    _configured["disable"] = _split(disable)
    _pm = None


def _create_plugin_manager(plugins: tuple[str, ...], disable: tuple[str, ...],
                           entry_points: bool) -> PluginManager:
    pm = PluginManager()
    wanted_off = {_normalise(name) for name in disable}

    def is_disabled(*names: str) -> bool:
        return any(_normalise(name) in wanted_off for name in names if name)

    for module_name in DEFAULT_PLUGINS:
        if is_disabled(module_name):
            pm.disabled.add(module_name)
        else:
            pm.register(importlib.import_module(module_name), name=module_name)
    if entry_points:
        for dist, ep in _toolkit_entry_points():
            if is_disabled(ep.name, dist.metadata["Name"]):
                pm.disabled.add(ep.name)
            elif pm.get_plugin(ep.name) is None and ep.name not in pm.failures:
                pm.versions[ep.name] = dist.version  # also for a plugin that fails to load
                # pluggy's own loader, one entry point at a time: called for the whole group it
                # stops at the first plugin that fails to import, taking the others with it.
                pm.load_plugin(lambda name=ep.name: pm.load_setuptools_entrypoints(
                    ENTRY_POINT_GROUP, name=name), name=ep.name)
    # A plugin file is named by its path, which no installed plugin's name can clash with.
    files = {f.resolve(): f for entry in plugins for f in _plugin_files(entry)}
    for path in files.values():
        name = str(path)
        if is_disabled(name, path.stem):
            pm.disabled.add(name)
        else:
            pm.load_plugin(lambda path=path, name=name: pm.register(_import_file(path), name=name),
                           name=name)
    return pm


def _toolkit_entry_points() -> Iterator[tuple[importlib.metadata.Distribution, Any]]:
    """(distribution, entry point) for each ``toolkit`` entry point, each name once, in a stable order."""
    found = {}
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP:
                found.setdefault(ep.name, (dist, ep))  # the first on sys.path wins, as imports do
    return iter(found[name] for name in sorted(found))


def _plugin_files(entry: str) -> list[Path]:
    path = Path(entry).expanduser()
    if path.is_dir():
        return sorted(p for p in path.glob("*.py") if not p.name.startswith("_"))
    if not path.is_file():
        raise UsageError(f"plugin file {entry!r} does not exist; TOOLKIT_PLUGINS takes .py files "
                         "and folders of them, comma-separated")
    if path.suffix != ".py":
        raise UsageError(f"plugin file {entry!r} is not a .py file")
    return [path]


def _import_file(path: Path) -> Any:
    """Import a plugin file as module ``toolkit_local_plugins.<stem>``."""
    name = f"toolkit_local_plugins.{re.sub(r'[^0-9a-zA-Z_]', '_', path.stem)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _split(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(item).strip() for item in items if str(item).strip())


def _normalise(name: str) -> str:
    """Distribution names compare as pip does: case and the runs of ``-_.`` do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def one_line(exc: BaseException) -> str:
    """An exception as one line: ``Type: message``."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# The registries built from the hooks live in toolkit.registry, which imports this module; their
# names are served from here too, looked up on first use so that either module may be imported
# first (an import at the bottom of this one fails when toolkit.registry is imported first).
_FROM_REGISTRY = ("Registration", "Registry", "blamed_on", "describe_plugins", "get_registry")


def __getattr__(name: str):
    if name in _FROM_REGISTRY:
        from toolkit import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "KINDS", "TYPED", "PluginFailure",
           "PluginManager", "PluginWarning", "configure", "get_plugin_manager", "one_line",
           *_FROM_REGISTRY]
