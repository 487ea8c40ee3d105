"""The plugin manager and the registries built from its hooks.

Built-in plugins (``DEFAULT_PLUGINS``) are registered first, exactly like third-party ones, then
every module named in the entry-point group ``toolkit`` (as ``datasette/plugins.py`` and
``llm/plugins.py`` do), then plugin files named by ``TOOLKIT_PLUGINS`` or :func:`configure`. The
manager is created on first use, so importing the toolkit stays cheap.

A third-party plugin that fails to import, or whose hook raises, is skipped with a
:class:`PluginWarning` and reported by ``toolkit plugins``; everything else keeps working.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import pluggy

from toolkit import contracts, hookspecs
from toolkit.errors import PluginError, ToolkitError, UsageError

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
        """Register what ``load()`` returns as plugin ``name``; record and warn if that fails."""
        try:
            plugin = load()
            unknown = [attr for attr in dir(plugin) if attr not in hookspecs.hook_names()
                       and self.parse_hookimpl_opts(plugin, attr) is not None]
            if unknown:
                raise PluginError(f"{', '.join(unknown)} is not a toolkit hook; hooks: "
                                  f"{', '.join(hookspecs.hook_names())}")
            self.register(plugin, name=name)
        except Exception as exc:  # a broken plugin must not take the toolkit down with it
            if self.get_plugin(name) is not None:  # pluggy may have added some hooks before failing
                self.unregister(name=name)
            self.record_failure(PluginFailure(name, "import", _one_line(exc)))

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
                pm.versions[ep.name] = dist.version
                pm.load_plugin(ep.load, name=ep.name)
    # A plugin file is named by its path, which no installed plugin's name can clash with.
    files = {f.resolve(): f for entry in plugins for f in _plugin_files(entry)}
    for path in files.values():
        name = str(path)
        if is_disabled(name, path.stem):
            pm.disabled.add(name)
        else:
            pm.load_plugin(lambda path=path: _import_file(path), name=name)
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


def _one_line(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@dataclasses.dataclass(frozen=True)
class Registration:
    """One named thing a plugin registered."""

    kind: str
    name: str
    obj: Any
    plugin: str
    metadata: dict[str, Any]

    @property
    def description(self) -> str:
        return str(self.metadata.get("description", ""))


class Registry:
    """Everything of one kind (``model``, ``dataset``, ...) that the loaded plugins register.

    Attributes:
        failures: the plugins whose hook for this kind raised (they are skipped) and the plugins
            that failed to load; named when a name is not found, since one of them may have held it.
        clashes: names registered by more than one plugin -> those plugins; :meth:`get` refuses
            such a name (naming them) and serves every other.
    """

    def __init__(self, kind: str, registrations: list[Registration],
                 failures: Iterable[PluginFailure] = (),
                 clashes: dict[str, tuple[str, ...]] | None = None):
        self.kind = kind
        self._items = {r.name: r for r in registrations}
        self.failures = tuple(failures)
        self.clashes = dict(clashes or {})

    def __iter__(self) -> Iterator[Registration]:
        return iter(sorted(self._items.values(), key=lambda r: r.name))

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except (UsageError, PluginError):
            return False
        return True

    def names(self) -> list[str]:
        return sorted(self._items)

    def in_order(self) -> list[Registration]:
        """The registrations in the order the plugins made them (built-in plugins first)."""
        return list(self._items.values())

    def get(self, name: str) -> Registration:
        """The registration called ``name``, or a ``UsageError`` listing the known names.

        A name registered with ``prefix=True`` (``"timm:"``) matches every name starting with it;
        its object is called with the rest of the name to produce the real object. A name that
        two plugins register raises ``PluginError`` naming both.
        """
        if name in self.clashes:
            first, *others = self.clashes[name]
            raise PluginError(f"{self.kind} {name!r} is registered by both {first!r} and "
                              f"{' and '.join(map(repr, others))}; uninstall, rename or disable one")
        if name in self._items and not self._items[name].metadata.get("prefix"):
            return self._items[name]
        for prefix, reg in self._items.items():
            if reg.metadata.get("prefix") and name.startswith(prefix) and len(name) > len(prefix):
                return dataclasses.replace(reg, name=name, obj=reg.obj(name[len(prefix):]))
        known = ", ".join(n + "<name>" if self._items[n].metadata.get("prefix") else n
                          for n in self.names())
        skipped = "".join(f"; {failure}" for failure in self.failures)
        raise UsageError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known or '(none)'}"
                         f"{skipped}")


def get_registry(kind: str, pm: pluggy.PluginManager | None = None) -> Registry:
    """Ask every plugin's ``register_<kind>s`` hook what it registers.

    A third-party plugin whose hook raises, or calls ``register`` against its contract, is left out
    of the registry whole (a :class:`PluginWarning` says why); a built-in one raises.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    pm = pm or get_plugin_manager()
    caller = getattr(pm.hook, KINDS[kind])
    found: dict[str, Registration] = {}
    clashes: dict[str, tuple[str, ...]] = {}
    failures = list(getattr(pm, "failures", {}).values())
    # Each implementation is called on its own so every registration knows which plugin made it:
    # `toolkit plugins` shows that, and a clash can name both plugins.
    for impl in caller.get_hookimpls():
        own: dict[str, Registration] = {}
        try:
            impl.function(register=_registrar(kind, impl.plugin_name, own))
        except Exception as exc:
            if impl.plugin_name in DEFAULT_PLUGINS:
                raise
            failure = PluginFailure(impl.plugin_name, KINDS[kind], _one_line(exc))
            failures.append(failure)
            warnings.warn(f"{failure}; skipped", PluginWarning, stacklevel=2)
            continue
        for name, reg in own.items():
            if name in found:
                clashes[name] = clashes.get(name, (found[name].plugin,)) + (reg.plugin,)
            else:
                found[name] = reg
    return Registry(kind, list(found.values()), failures, clashes)


def _registrar(kind: str, plugin: str, found: dict[str, Registration]) -> Callable[..., None]:
    def register(name: str, obj: Any, **metadata: Any) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {kind} without a name")
        if kind in TYPED and not isinstance(obj, TYPED[kind]):
            raise PluginError(f"plugin {plugin!r} registered {kind} {name!r} that is not a "
                              f"toolkit.{TYPED[kind].__name__}")
        if kind not in TYPED and not callable(obj):
            raise PluginError(f"plugin {plugin!r} registered {kind} {name!r} that is not callable")
        variables = metadata.get("variables", {})
        if not isinstance(variables, Mapping) or not all(
                isinstance(k, str) and isinstance(v, contracts.Variable) for k, v in variables.items()):
            raise PluginError(f"plugin {plugin!r} registered {kind} {name!r} with variables that "
                              "are not a dict of names to toolkit.Variable")
        if name in found:
            raise PluginError(f"plugin {plugin!r} registered {kind} {name!r} twice")
        found[name] = Registration(kind, name, obj, plugin, dict(metadata))

    return register


def describe_plugins(pm: pluggy.PluginManager | None = None, *, builtins: bool = True,
                     hook: str | None = None) -> list[dict]:
    """Each plugin as ``toolkit plugins`` prints it, sorted by name.

    Every entry has ``name``, ``version``, ``builtin``, ``hooks`` (the hooks it implements),
    ``registers`` (kind -> names), ``disabled`` and ``errors`` (stage -> message: ``import`` when it
    failed to load, a hook's name when that hook raised; such a plugin or hook is skipped). A
    plugin loaded from a file is named by its path.

    Args:
        pm: the plugin manager; the process-wide one by default.
        builtins: include the built-in plugins.
        hook: only the plugins that implement this hook.
    """
    pm = pm or get_plugin_manager()
    if hook is not None and hook not in hookspecs.hook_names():
        raise UsageError(f"unknown hook {hook!r}; hooks: {', '.join(hookspecs.hook_names())}")
    from toolkit.version import __version__

    versions = {pm.get_name(plugin): dist.version for plugin, dist in pm.list_plugin_distinfo()}
    versions.update(getattr(pm, "versions", {}))
    registered: dict[str, dict[str, list[str]]] = {}
    errors: dict[str, dict[str, str]] = {}
    for failure in getattr(pm, "failures", {}).values():
        errors.setdefault(failure.plugin, {})[failure.stage] = failure.error
    with warnings.catch_warnings():  # reported below, in the listing itself
        warnings.simplefilter("ignore", PluginWarning)
        for kind in KINDS:
            registry = get_registry(kind, pm)
            for reg in registry:
                registered.setdefault(reg.plugin, {}).setdefault(kind + "s", []).append(reg.name)
            for failure in registry.failures:
                errors.setdefault(failure.plugin, {})[failure.stage] = failure.error
            for name, plugins in registry.clashes.items():
                for plugin in plugins[1:]:
                    errors.setdefault(plugin, {})[f"{kind} {name}"] = (
                        f"also registered by {plugins[0]!r}; neither is used")
    entries = {name: {"hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or ()),
                      "disabled": False} for name, plugin in pm.list_name_plugin()}
    entries.update({name: {"hooks": [], "disabled": False} for name in errors if name not in entries})
    entries.update({name: {"hooks": [], "disabled": True}
                    for name in getattr(pm, "disabled", ()) if name not in entries})
    out = []
    for name in sorted(entries):
        is_builtin = name in DEFAULT_PLUGINS
        if (is_builtin and not builtins) or (hook is not None and hook not in entries[name]["hooks"]):
            continue
        out.append({
            "name": name,
            "version": __version__ if is_builtin else versions.get(name),
            "builtin": is_builtin,
            "hooks": entries[name]["hooks"],
            "registers": registered.get(name, {}),
            "disabled": entries[name]["disabled"],
            "errors": errors.get(name, {}),
        })
    return out


@contextlib.contextmanager
def blamed_on(registration: Registration, what: str) -> Iterator[None]:
    """Turn a plugin's own failure into one line naming the plugin, not a traceback."""
    try:
        yield
    except ToolkitError:
        raise
    except Exception as exc:
        raise PluginError(f"{registration.kind} {registration.name!r} (plugin "
                          f"{registration.plugin!r}) {what}: {type(exc).__name__}: {exc}") from exc
