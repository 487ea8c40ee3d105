"""The typed objects plugins hand to ``register``: variables, probes, figures and scores.

Plain dataclasses, importable without torch or matplotlib, so that :mod:`toolkit.plugins` can check
what a plugin registers. Their meaning is documented with the hooks that take them
(:mod:`toolkit.hookspecs`); ``toolkit.Variable``, ``toolkit.Probe``, ``toolkit.FigureSpec`` and
``toolkit.Score`` are the same classes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping


@dataclasses.dataclass(frozen=True)
class FeatureGrid:
    """Marks a variable ``(interval, seed, k, j, feature)`` as the penultimate features of a grid of
    images, like the core's ``features`` of ``P``: the ``cosine`` metrics compute ``{prefix}C`` and
    ``{prefix}R`` from it as they compute ``C`` and ``R`` from ``features``.

    Attributes:
        prefix: put before ``C`` and ``R`` in the names of the variables computed from it.
        images: the name of the image grid the features are of (used in the attributes' formulas).
        kind: what its images are, for the attributes' ``long_name`` (``"prototype"`` for ``P``).
    """

    prefix: str
    images: str
    kind: str


@dataclasses.dataclass(frozen=True)
class Variable:
    """A variable of the results file: its dimensions, attributes and how it is stored.

    Attributes:
        dims: its dimension names, from ``interval``, ``seed``, ``k``, ``j``, ``i``, ``class``,
            ``feature``, ``channel``, ``y``, ``x`` (or new ones of the plugin's own).
        attrs: its attributes (``long_name``, ``units``, ...); a metric's variables carry the
            attributes the metric gives them, and these document them.
        image: pixels in [0, 1], stored as uint8 with ``scale_factor = 1/255`` (dims ending with
            ``channel, y, x``); a probe's images are only kept when the run saves images.
        grid: set on the penultimate features of a grid of images (see :class:`FeatureGrid`).
        column: ``(heading, format)`` of the variable's column in the summary table (``toolkit
            summary``, the report), for a variable with dims ``(interval,)``; e.g.
            ``("C_mean", "{:.4f}")``. Columns follow the order the variables are declared in.
    """

    dims: tuple[str, ...]
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    image: bool = False
    grid: FeatureGrid | None = None
    column: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(self.dims))
        if not all(isinstance(d, str) and d for d in self.dims):
            raise TypeError(f"Variable dims must be names; got {self.dims!r}")


@dataclasses.dataclass(frozen=True)
class Probe:
    """Something measured on the model itself, on each interval's grids, while the model is at hand.

    Attributes:
        run: ``run(model, grid, records, settings)`` returning a mapping ``name -> array`` with one
            entry per name in ``variables`` (see ``register_probes``); with ``blocks=True`` it also
            takes the keywords ``rows`` and ``prototypes``.
        variables: what it returns, by name; each variable's first two dims are ``interval, seed``.
        blocks: it can run on blocks of rows of the grids (``rows=range``, ``prototypes=``); every
            variable then has ``k`` or ``class`` after ``interval, seed``. Otherwise it is only
            ever given whole grids.
    """

    run: Callable[..., Mapping[str, Any]]
    variables: Mapping[str, Variable]
    blocks: bool = False


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """A figure of a results file, drawn by ``toolkit plot`` and shown by ``toolkit report``.

    Attributes:
        draw: ``draw(ds, **options) -> matplotlib.figure.Figure``; it may take the keywords
            ``seed``, ``interval`` and ``classes`` (the choices of ``plot``), and raises
            :class:`toolkit.plotting.MissingData` when ``ds`` lacks what it needs.
        heading: the figure's heading in the report.
        how_to_read: a paragraph telling a reader what the figure shows and how to read it.
        needs: the variables it draws; a file without them skips it.
        optional: it shows what an optional plugin adds: drawn when the file has its data, and
            skipped without a word when it has not, unless asked for by name.
    """

    draw: Callable[..., Any]
    heading: str
    how_to_read: str
    needs: tuple[str, ...] = ()
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class Score:
    """A data-free number per interval, computed from a results file, that ``toolkit quality``
    correlates with test accuracy.

    Attributes:
        compute: ``compute(ds) -> numpy array (interval,)`` of float64.
        needs: the variables it reads; a file without them has no value for it.
        expected: the sign its correlation with accuracy is expected to have: +1, -1, or 0 (no sign
            claimed).
        why: where that expectation comes from, in one line.
    """

    compute: Callable[[Any], Any]
    needs: tuple[str, ...]
    expected: int
    why: str

    @classmethod
    def of_variable(cls, name: str, expected: int, why: str) -> "Score":
        """The score that is the ``(interval,)`` variable ``name`` of the results file itself."""
        return cls(_VariableValues(name), (name,), expected, why)

    def __post_init__(self) -> None:
        if self.expected not in (-1, 0, 1):
            raise ValueError(f"Score expected must be +1, -1 or 0; got {self.expected!r}")


@dataclasses.dataclass(frozen=True)
class _VariableValues:
    """``ds[name]`` as float64 values (a picklable, comparable ``compute``)."""

    name: str

    def __call__(self, ds: Any) -> Any:
        return ds[self.name].values.astype("float64")
