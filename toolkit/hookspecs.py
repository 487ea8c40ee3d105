"""The hooks plugins implement.

Every hook receives a ``register`` callback and calls it once per thing it adds, in the style of
``llm`` and ``datasette``::

    import toolkit

    @toolkit.hookimpl
    def register_metrics(register):
        register("gap", gap_metric, description="C mean minus R mean")

``register(name, obj, **metadata)`` takes optional keyword metadata: ``description`` (shown by
``toolkit plugins``) and whatever the kind documents below. Names are unique across all plugins
(per kind).

Synthesizers, metrics and probes declare the variables they add to the results file, each a
:class:`toolkit.Variable` (dims, attributes, whether it is an image): metrics and synthesizers
with the metadata ``variables={name: Variable}``, probes in :class:`toolkit.Probe`. Reading a
file checks the dimensions of every variable the installed plugins declare; ``docs/results-file.md``
lists them.
"""
from __future__ import annotations

from typing import Any, Callable, Generic, Protocol, TypeVar

import pluggy

from toolkit.contracts import FigureSpec, Probe, Score

hookspec = pluggy.HookspecMarker("toolkit")
hookimpl = pluggy.HookimplMarker("toolkit")

T = TypeVar("T", contravariant=True)


class Register(Protocol, Generic[T]):
    """The ``register`` callback a hook receives: ``register(name, obj, **metadata)``, once per
    thing it adds; ``obj`` is of the type the hook documents."""

    def __call__(self, name: str, obj: T, /, **metadata: Any) -> None: ...


ModelFactory = Callable[[int, int, int], Any]       # (num_classes, in_chans, image_size) -> Module
DatasetLoader = Callable[..., Any]                  # (root, download) -> toolkit.ImageDataset
Synthesizer = Callable[..., Any]                    # (model, start, targets, settings, progress)
Metric = Callable[..., Any]                         # (ds, **options) -> {name: DataArray}


@hookspec
def register_models(register: Register[ModelFactory]) -> None:
    """Register model architectures.

    Call ``register(name, factory)`` with ``factory(num_classes, in_chans, image_size)`` returning a
    fresh, randomly initialised ``torch.nn.Module`` that follows timm's feature protocol:

    - ``forward_features(x)`` maps images ``(N, in_chans, image_size, image_size)`` to feature maps;
    - ``forward_head(x, pre_logits=False)`` maps those to logits ``(N, num_classes)``, or with
      ``pre_logits=True`` to the penultimate feature vectors ``(N, F)`` (any shape that flattens to
      ``N`` rows; these are the features ``C`` and ``R`` compare);
    - ``forward(x)`` returns the logits.

    The three arguments are positional ints; ``image_size`` is the images' height. The factory is
    called after ``torch.manual_seed(seed_start)``, so its initialisation is reproducible; it should not
    download weights. The toolkit moves the model to the device, trains it with its own loop (SGD,
    cross-entropy on the logits) and probes it in ``eval()`` mode with frozen weights. Its plain
    zero-padded ``nn.Conv2d`` modules become ``toolkit.model.PaddingSkippingConv2d``, which
    computes the same without the kernel taps that read only padding, and with frozen weights on
    the CPU, on maps so small that every output reads all of them, as one matrix product (same
    parameters and ``state_dict``; ``torch.fx``, ``torch.export`` and ``torch.compile`` handle it,
    ``torch.jit.script`` does not); subclasses of ``nn.Conv2d`` are left as they are.

    The model receives inputs already normalised by the dataset's mean and std: the toolkit wraps it
    (``toolkit.model.NormalizedClassifier``) so that images stay in [0, 1] pixel space during
    synthesis. Do not normalise again inside the model. ``forward_head(x, pre_logits=True)`` must
    return the penultimate features (``num_features`` wide), not the logits; both are checked when
    the model is built.

    Metadata: ``description``; ``prefix=True`` registers a family (``"timm:"``): ``factory`` is then
    called with the rest of the name (``"resnet34"`` for ``"timm:resnet34"``) and returns the real
    factory, or raises :class:`toolkit.UsageError` for a name it does not know.
    """


@hookspec
def register_datasets(register: Register[DatasetLoader]) -> None:
    """Register datasets.

    Call ``register(name, loader)`` with ``loader(root, download)`` returning a
    :class:`toolkit.ImageDataset`:

    - ``train_images``, ``test_images``: uint8 tensors ``(N, C, H, W)``, pixel values 0-255, the
      same ``C, H, W`` in both splits (square images: models are built for ``image_size = H``);
    - ``train_labels``, ``test_labels``: int64 tensors ``(N,)`` with values in ``[0, n)``;
    - ``class_names``: ``n >= 2`` unique names, in label order;
    - ``mean``, ``std``: per-channel statistics of the training pixels scaled to [0, 1]; leave them
      out to have them computed. The toolkit normalises with them; the loader never normalises.

    ``root`` is a ``pathlib.Path`` folder where the files are or should go (``--data_root``);
    ``download`` says whether fetching them is allowed. Raise :class:`toolkit.UsageError` with a
    one-line message saying where to put the files when they are missing. Any other exception is
    reported as the dataset's failure, naming the plugin. Everything is held in memory. The loader
    must be deterministic: every call returns the same images, labels and class names in the same
    order (fix the seed of any random split or subset), since a rerun checks the data against its
    work directory and refuses data that differ.

    Metadata: ``description``; ``defaults``, a dict of analysis options for this dataset, for
    example ``{"lr": 0.01, "epochs": 15}``. The user's explicit options win over it; the options a
    dataset may set are ``toolkit.config.DATASET_DEFAULTABLE`` (``lr``, ``epochs``,
    ``crop_padding``, ``flip``, ``train_lr``, ``train_batch_size``, ``max_steps``).
    """


@hookspec
def register_synthesizers(register: Register[Synthesizer]) -> None:
    """Register image synthesis strategies.

    Call ``register(name, synthesizer)`` with ``synthesizer(model, start, targets, settings,
    progress=None)`` that returns a :class:`toolkit.SynthesisResult`:

    - ``model``: the normalising model wrapper, in ``eval()`` mode with frozen weights
      (``requires_grad`` off); it maps pixels in [0, 1] to logits ``(N, n)``. Gradients with respect
      to the input still flow: set ``requires_grad`` on your images;
    - ``start``: float32 images ``(N, C, H, W)`` in [0, 1] on the model's device (uniform noise for
      the class prototypes, a prototype for the intermediary ones); do not modify it in place;
    - ``targets``: int64 ``(N,)`` classes to push each image into;
    - ``settings``: a :class:`toolkit.SynthesisSettings`: ``lr``, ``loss_threshold``,
      ``max_steps``, ``fixed_steps`` and ``batch_size`` as the user set them; honour those that
      apply to your method;
    - ``progress``: optional callable; call it with the number of images just finished, so the
      progress bar moves (all ``N`` in total).

    The result holds, per image in the order of ``start``: ``images`` float32 ``(N, C, H, W)`` in
    [0, 1]; ``steps`` int64 updates taken; ``loss`` float32 final cross-entropy toward the target;
    ``converged`` bool, whether that loss is below ``settings.loss_threshold``; ``predicted``
    int64 the model's class; ``confidence`` float32 softmax probability of that class. Tensors may
    be on any device; the toolkit checks the shapes, moves them to the CPU and casts the dtypes.
    The toolkit calls it for the class prototypes of groups of seeds, then for the intermediary
    prototypes of each block of the grids (fixed pieces, the same in every run of a configuration
    and on any number of ranks; ``toolkit.distributed``). Images must not influence each other:
    each image's result must be the one it would get alone.

    Metadata: ``description``; ``probe``, the name of a probe (``register_probes``) that runs on
    the grids this synthesizer makes, while each interval's model is at hand; ``variables``, the
    :class:`toolkit.Variable` of what a run with it adds beyond its probe's (for instance what the
    metrics compute from its probe's feature grid).
    """


@hookspec
def register_metrics(register: Register[Metric]) -> None:
    """Register metrics computed from a results dataset.

    Call ``register(name, metric)`` with ``metric(ds, **options)`` taking the ``xarray.Dataset``
    built so far and returning a ``dict`` of new ``xarray.DataArray`` variables or a Dataset, which is
    merged into the results (a name the results already hold is refused, naming the
    plugin: a metric never replaces a variable). ``ds`` holds ``features``
    ``(interval, seed, k, j, feature)`` and the per-image records ``steps``, ``loss``,
    ``converged``, ``predicted``, ``confidence`` ``(interval, seed, k, j)``, ``test_accuracy`` and
    ``train_size`` ``(interval)``, plus every variable of the metrics listed before it (``C`` and
    ``R`` ``(interval, seed, k, j, i)`` after ``cosine``). Use those dimension names, so results
    stay labelled; give each variable ``long_name`` and ``units`` attributes. Do not modify ``ds``.

    ``options`` are the user's ``metric_options[name]`` (``--metric_options '{"name": {...}}'``),
    passed as keyword arguments. Before any training the toolkit runs the whole metric chain once
    on a small made-up dataset (2 intervals, 2 seeds, 3 classes, 4 features), so a metric that
    cannot run fails in seconds; keep the metric cheap and pure.

    Metadata:

    - ``description``;
    - ``check_options``, a callable taking the same keyword options, called before any training;
      it raises :class:`toolkit.UsageError` for options the metric cannot use;
    - ``variables``, ``{name: toolkit.Variable}``: what the metric adds (with its default
      options); reading a file checks their dims;
    - ``probe``, the name of a probe (``register_probes``) that must run during the synthesis for
      this metric (its variables are in ``ds`` when the metric runs);
    - ``streams``, a callable ``streams(ds) -> {name: toolkit.results.Streamed}``: the metric's
      ``(interval, seed, k, j, i)`` variables that it can hand to the results writer block by
      block instead of holding them (``Streamed(along, block, attrs)``: ``block(t, s, start,
      stop)`` returns float32 values ``(k, j, i)`` for indices ``start:stop`` along ``along``,
      ``"k"`` or ``"j"``); a ``--save`` naming one has it written to the file that way. The values
      must equal what the metric itself would compute.

    The features of a grid of images (the core's ``features`` of ``P``, or a variable a plugin
    declares with ``Variable(grid=toolkit.FeatureGrid(prefix, images, kind))``) are listed by
    ``toolkit.schema.feature_grids(ds)``; metrics that compare features compute their variables
    for each of them.
    """


@hookspec
def register_probes(register: Register[Probe]) -> None:
    """Register probes: measurements of the model itself on each interval's grids.

    Call ``register(name, toolkit.Probe(run, variables, blocks=False))``. A synthesizer or metric
    registered with ``probe=name`` has the probe run, with each interval's model at hand, on the
    grids that interval synthesises; what it returns becomes variables of the results file:

    - ``run(model, grid, records, settings)``: ``model`` the normalising wrapper in ``eval()``
      mode with frozen weights; ``grid`` float32 ``(seed, k, j, C, H, W)``, ``P`` of some seeds;
      ``records`` the synthesizer's records of those images (``steps``, ``loss``, ... each ``(seed,
      k, j)``); ``settings`` the :class:`toolkit.SynthesisSettings`. It returns a mapping with one
      array (or tensor) per name in ``variables``: leading dim ``seed``, then the rest of the
      variable's dims (whose first two are ``interval, seed``). Images (``Variable(image=True)``)
      are pixels in [0, 1], stored as uint8 and only when the run saves images.
    - ``variables``: ``{name: toolkit.Variable}``, exactly what ``run`` returns.
    - ``blocks=True``: the probe can run on blocks of rows of the grids: ``run`` then takes the
      keywords ``rows`` (a ``range`` of the ``k`` of each row of ``grid``) and ``prototypes``
      (``(seed, n, C, H, W)``, every class prototype of its seeds), and returns arrays whose
      leading dims are ``(seed, row)``; each variable must have ``k`` or ``class`` after
      ``interval, seed``. A run with a probe that cannot take blocks synthesises whole grids.

    A probe that raises, or returns other names or shapes, stops the run with a one-line
    :class:`toolkit.PluginError` naming the plugin. Metadata: ``description``.
    """


@hookspec
def register_figures(register: Register[FigureSpec]) -> None:
    """Register figures of a results file, drawn by ``toolkit plot`` and shown by ``toolkit report``.

    Call ``register(name, toolkit.FigureSpec(draw, heading, how_to_read, needs=(), optional=False))``:

    - ``draw(ds, **options)`` returns a ``matplotlib.figure.Figure`` drawn from the results Dataset
      alone (use ``toolkit.plotting.new_figure``, not pyplot). It may take the keywords ``seed``,
      ``interval`` and ``classes`` (the user's choices of which images to show; the helpers
      ``toolkit.plotting.pick_seed`` and friends resolve them). When ``ds`` lacks what it needs it
      raises :class:`toolkit.plotting.MissingData` saying how to get it;
    - ``heading`` and ``how_to_read``: the figure's heading and the paragraph that tells a reader
      how to read it, in the report;
    - ``needs``: the variables it draws, for the documentation;
    - ``optional=True``: it shows what an optional plugin adds; a file without its data skips it
      without a warning unless the user asked for it by name.

    The file is ``<name>.<format>`` in the figure folder. Metadata: ``description``.
    """


@hookspec
def register_scores(register: Register[Score]) -> None:
    """Register data-free scores, which ``toolkit quality`` correlates with test accuracy.

    Call ``register(name, toolkit.Score(compute, needs, expected, why))``:

    - ``compute(ds)`` returns a float64 array ``(interval,)``: the score of each interval of the
      results Dataset ``ds``;
    - ``needs``: the variables it reads, and all it is given when ``toolkit quality`` reads a
      file (the rest stays on disk); a file that lacks one has no value for the score;
    - ``expected``: the sign its correlation with accuracy should have if the score works: ``+1``,
      ``-1``, or ``0`` where no sign is claimed;
    - ``why``: one line saying where that expectation comes from.

    ``toolkit.Score.of_variable(name, expected, why)`` is the score that is an ``(interval,)``
    variable of the file itself. Metadata: ``description``.
    """


def hook_names() -> list[str]:
    """Names of every hook, in definition order."""
    return [name for name, obj in globals().items() if hasattr(obj, "toolkit_spec")]


__all__ = ["hookimpl", "hookspec", "hook_names", "Register"]
