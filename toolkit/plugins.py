"""The plugin manager and the registries built from its hooks.

Built-in plugins (``DEFAULT_PLUGINS``) are registered first, exactly like third-party ones, then
every module named in the entry-point group ``toolkit`` (as ``datasette/plugins.py`` and
``llm/plugins.py`` do). The manager is created on first use, so importing the toolkit stays cheap.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Callable, Iterator

import pluggy

from toolkit import hookspecs
from toolkit.errors import PluginError, UsageError

DEFAULT_PLUGINS = (
    "toolkit_plugins.models",
    "toolkit_plugins.datasets",
    "toolkit_plugins.synthesis",
    "toolkit_plugins.metrics",
)

# The kinds of things plugins register, keyed by the word used in messages and in `toolkit plugins`.
KINDS = {
    "model": "register_models",
    "dataset": "register_datasets",
    "synthesizer": "register_synthesizers",
    "metric": "register_metrics",
}

_pm: pluggy.PluginManager | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created (and plugins loaded) on first call.

    Set ``TOOLKIT_LOAD_ENTRYPOINTS=0`` to skip installed third-party plugins.
    """
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("toolkit")
        pm.add_hookspecs(hookspecs)
        for module_name in DEFAULT_PLUGINS:
            pm.register(importlib.import_module(module_name), name=module_name)
        if os.environ.get("TOOLKIT_LOAD_ENTRYPOINTS", "1") != "0":
            pm.load_setuptools_entrypoints("toolkit")
        _pm = pm
    return _pm


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
    """Everything of one kind (``model``, ``dataset``, ...) that the loaded plugins register."""

    def __init__(self, kind: str, registrations: list[Registration]):
        self.kind = kind
        self._items = {r.name: r for r in registrations}

    def __iter__(self) -> Iterator[Registration]:
        return iter(sorted(self._items.values(), key=lambda r: r.name))

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except UsageError:
            return False
        return True

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> Registration:
        """The registration called ``name``, or a ``UsageError`` listing the known names.

        A name registered with ``prefix=True`` (``"timm:"``) matches every name starting with it;
        its object is called with the rest of the name to produce the real object.
        """
        if name in self._items and not self._items[name].metadata.get("prefix"):
            return self._items[name]
        for prefix, reg in self._items.items():
            if reg.metadata.get("prefix") and name.startswith(prefix) and len(name) > len(prefix):
                return dataclasses.replace(reg, name=name, obj=reg.obj(name[len(prefix):]))
        known = ", ".join(n + "<name>" if self._items[n].metadata.get("prefix") else n
                          for n in self.names())
        raise UsageError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known or '(none)'}")


def get_registry(kind: str, pm: pluggy.PluginManager | None = None) -> Registry:
    """Ask every plugin's ``register_<kind>s`` hook what it registers."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    pm = pm or get_plugin_manager()
    caller = getattr(pm.hook, KINDS[kind])
    found: dict[str, Registration] = {}
    # Each implementation is called on its own so every registration knows which plugin made it:
    # `toolkit plugins` shows that, and a clash can name both plugins.
    for impl in caller.get_hookimpls():
        impl.function(register=_registrar(kind, impl.plugin_name, found))
    return Registry(kind, list(found.values()))


def _registrar(kind: str, plugin: str, found: dict[str, Registration]) -> Callable[..., None]:
    def register(name: str, obj: Any, **metadata: Any) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {kind} without a name")
        if not callable(obj):
            raise PluginError(f"plugin {plugin!r} registered {kind} {name!r} that is not callable")
        if name in found:
            raise PluginError(f"{kind} {name!r} is registered by both {found[name].plugin!r} and "
                              f"{plugin!r}; uninstall or rename one of them")
        found[name] = Registration(kind, name, obj, plugin, dict(metadata))

    return register


def describe_plugins(pm: pluggy.PluginManager | None = None, *, builtins: bool = True) -> list[dict]:
    """Each plugin's name, version, hooks and what it registers, as ``toolkit plugins`` prints."""
    pm = pm or get_plugin_manager()
    from toolkit import __version__

    versions = {plugin: dist.version for plugin, dist in pm.list_plugin_distinfo()}
    registered: dict[str, dict[str, list[str]]] = {}
    for kind in KINDS:
        for reg in get_registry(kind, pm):
            registered.setdefault(reg.plugin, {}).setdefault(kind + "s", []).append(reg.name)
    out = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        is_builtin = name in DEFAULT_PLUGINS
        if is_builtin and not builtins:
            continue
        out.append({
            "name": name,
            "version": __version__ if is_builtin else versions.get(plugin),
            "builtin": is_builtin,
            "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or ()),
            "registers": registered.get(name, {}),
        })
    return out
