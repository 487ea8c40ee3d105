"""What a results file holds: the core's variables, and those the installed plugins declare.

The core makes the per-image records of the grid ``P`` and the images; every other variable comes
from a plugin, which declares it (a :class:`toolkit.Variable`) when it registers: a metric or
synthesizer with ``variables=``, a probe in its :class:`toolkit.Probe`. :func:`declared` reads
them from the registries; ``results.validate`` checks their dims, and ``docs/results-file.md`` is
generated from them (``python -m toolkit.schemadocs docs/results-file.md``).
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import xarray as xr

from toolkit.contracts import FeatureGrid, Variable

GRID = ("interval", "seed", "k", "j")
PAIRS = (*GRID, "i")
PIXELS = ("channel", "y", "x")

# The core's variables: every results file holds these.
REQUIRED = {
    "features": Variable((*GRID, "feature"),
                         dict(long_name="penultimate feature vector of P[k, j]", units="1"),
                         grid=FeatureGrid(prefix="", images="P", kind="prototype")),
    "steps": Variable(GRID, dict(long_name="input-gradient steps taken by P[k, j]", units="1")),
    "loss": Variable(GRID, dict(long_name="final cross-entropy of P[k, j] toward class k",
                                units="1")),
    "converged": Variable(GRID, dict(long_name="loss of P[k, j] below the loss threshold")),
    "predicted": Variable(GRID, dict(long_name="class the model assigns to P[k, j]")),
    "confidence": Variable(GRID, dict(long_name="softmax probability of the predicted class",
                                      units="1")),
    "test_accuracy": Variable(("interval",), dict(long_name="top-1 accuracy on the test split",
                                                  units="1")),
    "train_size": Variable(("interval",), dict(
        long_name="training images the model had seen by this interval",
        comment="-1: unknown (weights given with --checkpoints)")),
    "class_name": Variable(("class",), dict(long_name="name of each class index")),
}
# The core's images: optional (see toolkit.results), dims checked where present.
IMAGES = {
    "noise": Variable(("seed", "class", *PIXELS),
                      dict(long_name="uniform noise the class prototypes start from", units="1"),
                      image=True),
    "prototypes": Variable(("interval", "seed", "class", *PIXELS),
                           dict(long_name="class prototype p_c = P[c, c]", units="1"), image=True),
    "P": Variable((*GRID, *PIXELS), dict(
        long_name="intermediary prototype P[k, j]: p_j pushed into class k", units="1"),
                  image=True),
}
CORE = {**REQUIRED, **IMAGES}


@dataclasses.dataclass(frozen=True)
class Declared:
    """A variable a plugin declares: the variable, and who declares it."""

    name: str
    variable: Variable
    plugin: str
    kind: str       # "metric", "synthesizer" or "probe"
    owner: str      # the name of that metric, synthesizer or probe


def declared(pm=None) -> dict[str, Declared]:
    """Every variable the loaded plugins declare, by name, in registration order (the first
    declaration of a name wins; a core variable cannot be redeclared)."""
    import warnings

    from toolkit.plugins import PluginWarning, get_registry

    out: dict[str, Declared] = {}
    with warnings.catch_warnings():  # a broken plugin is reported where its kind is used
        warnings.simplefilter("ignore", PluginWarning)
        for kind in ("synthesizer", "metric", "probe"):
            for reg in get_registry(kind, pm).in_order():
                variables = dict(reg.obj.variables) if kind == "probe" else {}
                variables.update(reg.metadata.get("variables", {}))
                for name, variable in variables.items():
                    if name not in CORE and name not in out:
                        out[name] = Declared(name, variable, reg.plugin, kind, reg.name)
    return out


def all_variables(pm=None) -> dict[str, Variable]:
    """The core's variables and every declared one, by name."""
    return {**CORE, **{name: d.variable for name, d in declared(pm).items()}}


def images(pm=None) -> dict[str, Variable]:
    """The image variables (stored as uint8 pixels): the core's and the declared ones."""
    return {name: v for name, v in all_variables(pm).items() if v.image}


def feature_grids(ds: xr.Dataset) -> Iterator[tuple[str, FeatureGrid]]:
    """(variable, its grid) for each feature grid ``ds`` holds: the core's ``features`` first,
    then each variable a plugin declares with ``grid=FeatureGrid(...)``."""
    for name, variable in all_variables().items():
        if variable.grid is not None and name in ds.variables:
            yield name, variable.grid
