"""The registries built from the plugins' hooks: what each kind of thing plugins register.

Used through :mod:`toolkit.plugins`, which re-exports every name here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping

import pluggy

from toolkit import contracts, hookspecs
from toolkit.errors import PluginError, ToolkitError, UsageError
from toolkit.plugins import (DEFAULT_PLUGINS, KINDS, TYPED, PluginFailure, PluginWarning,
                             get_plugin_manager, one_line)


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
            impl.function(register=registrar(kind, impl.plugin_name, own))
        except Exception as exc:
            if impl.plugin_name in DEFAULT_PLUGINS:
                raise
            failure = PluginFailure(impl.plugin_name, KINDS[kind], one_line(exc))
            failures.append(failure)
            warnings.warn(f"{failure}; skipped", PluginWarning, stacklevel=2)
            continue
        for name, reg in own.items():
            if name in found:
                clashes[name] = clashes.get(name, (found[name].plugin,)) + (reg.plugin,)
            else:
                found[name] = reg
    return Registry(kind, list(found.values()), failures, clashes)


def registrar(kind: str, plugin: str, found: dict[str, Registration]) -> Callable[..., None]:
    def register(name: str, obj: Any, **metadata: Any) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {kind} without a name")
        if kind in TYPED and not isinstance(obj, TYPED[kind]):
            raise PluginError(f"plugin {plugin!r} registered {kind} {name!r} that is not a "
                              f"toolkit.{TYPED[kind].__name__}")
        if kind not in TYPED and not callable(obj):
            raise PluginError(f"plugin {plugin!r} registered {kind} {name!r} that is not callable")
        for variables in (metadata.get("variables", {}), getattr(obj, "variables", {})):
            if not isinstance(variables, Mapping) or not all(
                    isinstance(k, str) and isinstance(v, contracts.Variable)
                    for k, v in variables.items()):
                raise PluginError(f"plugin {plugin!r} registered {kind} {name!r} with variables "
                                  "that are not a dict of names to toolkit.Variable")
        if "probe" in metadata and not isinstance(metadata["probe"], str):
            raise PluginError(f"plugin {plugin!r} registered {kind} {name!r} with probe= that is "
                              "not the name of a probe (register it with register_probes)")
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
                for plugin in plugins:  # listed and flagged on every side of the clash
                    names = registered.setdefault(plugin, {}).setdefault(kind + "s", [])
                    if name not in names:
                        names.append(name)
                    others = ", ".join(repr(p) for p in plugins if p != plugin)
                    errors.setdefault(plugin, {})[f"{kind} {name}"] = (
                        f"also registered by {others}; neither is used")
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
