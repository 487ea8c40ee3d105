"""Helpers for testing plugins: register one for the duration of a test, and try metrics on a
small made-up results dataset.

::

    import pytest
    import toolkit
    from toolkit.testing import register_plugin

    import my_plugin

    @pytest.fixture
    def plugin():
        with register_plugin(my_plugin):
            yield

    def test_my_metric_runs_in_a_study(plugin):
        ds = toolkit.analyze(model="my-model", dataset="my-data", metrics="cosine,zscore,my-metric",
                             intervals=[1.0], seeds=1, epochs=1)
        assert "my_variable" in ds

Installed plugins are loaded as usual; when the plugin under test is installed too (an editable
install while you develop it), ``register_plugin`` replaces the installed copy for the test and
puts it back afterwards.
"""
from __future__ import annotations

import contextlib
import types
from typing import Any, Iterable, Iterator, Mapping

import xarray as xr

from toolkit.plugins import get_plugin_manager, get_registry


@contextlib.contextmanager
def register_plugin(plugin: Any, name: str | None = None) -> Iterator[str]:
    """Register ``plugin`` with the process-wide plugin manager until the ``with`` block ends.

    Args:
        plugin: a module, or an object (a class instance) whose methods are marked with
            ``@toolkit.hookimpl``.
        name: the plugin's name, as ``toolkit plugins`` shows it and as messages name it; by
            default the module's name, or the object's ``__name__``, else its class's name.

    Yields:
        The name it is registered under.

    Raises:
        ValueError: another plugin is already registered under ``name`` and it is not an installed
            copy of the same module.
    """
    pm = get_plugin_manager()
    if name is None:
        name = plugin.__name__ if isinstance(plugin, types.ModuleType) else \
            getattr(plugin, "__name__", type(plugin).__name__)
    # An installed copy of the same module (under its entry-point name) steps aside meanwhile.
    displaced = [(other_name, other) for other_name, other in pm.list_name_plugin()
                 if other is plugin or (isinstance(plugin, types.ModuleType)
                                        and getattr(other, "__name__", None) == plugin.__name__)]
    if pm.get_plugin(name) is not None and name not in dict(displaced):
        raise ValueError(f"a plugin named {name!r} is already registered; pass another name")
    for other_name, _ in displaced:
        pm.unregister(name=other_name)
    pm.register(plugin, name=name)
    try:
        yield name
    finally:
        pm.unregister(name=name)
        for other_name, other in displaced:
            pm.register(other, name=other_name)


@contextlib.contextmanager
def fresh_plugin_manager() -> Iterator[Any]:
    """A new process-wide plugin manager for the ``with`` block, built from the environment as it
    is now (installed plugins, ``TOOLKIT_PLUGINS``, ``TOOLKIT_DISABLE_PLUGINS``); the previous one,
    and any :func:`toolkit.plugins.configure` settings, are restored afterwards.

    For testing how plugins load: set the environment (e.g. with pytest's ``monkeypatch.setenv``
    or ``monkeypatch.syspath_prepend`` for a fake installed distribution) before entering.

    Yields:
        The new :class:`toolkit.plugins.PluginManager`.
    """
    from toolkit import plugins

    saved = plugins._pm, dict(plugins._configured)
    plugins._pm = None
    try:
        yield plugins.get_plugin_manager()
    finally:
        plugins._pm = saved[0]
        plugins._configured.clear()
        plugins._configured.update(saved[1])


def make_results(intervals: int = 2, seeds: int = 2, classes: int = 3, features: int = 4,
                 seed: int = 0) -> xr.Dataset:
    """A results dataset before any metric, as a metric receives it: random ``features``
    ``(interval, seed, k, j, feature)`` in [0, 1) and neutral per-image records.

    The toolkit tries every metric chain on such a dataset (``make_results()``) before training.
    """
    import numpy as np

    from toolkit.results import dataset_from_features

    rng = np.random.default_rng(seed)
    return dataset_from_features(rng.random((intervals, seeds, classes, classes, features)))


def run_metrics(ds: xr.Dataset, metrics: str | Iterable[str],
                options: Mapping[str, Mapping[str, Any]] | None = None) -> xr.Dataset:
    """Run registered metrics on ``ds`` by name, in order, as ``analyze`` does; return the result.

    Args:
        ds: a results dataset, e.g. from :func:`make_results`.
        metrics: metric names, a list or comma-separated, e.g. ``"cosine,zscore,my-metric"``.
        options: keyword options per metric, e.g. ``{"zscore": {"reference": "seed"}}``.
    """
    from toolkit.metrics import apply_metric, check_metric_options

    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
    registry = get_registry("metric")
    for name in names:
        registration = registry.get(name)
        check_metric_options(registration, (options or {}).get(name, {}))
        ds = apply_metric(ds, registration, (options or {}).get(name, {}))
    return ds


__all__ = ["fresh_plugin_manager", "make_results", "register_plugin", "run_metrics"]
