"""The hooks plugins implement.

Every hook receives a ``register`` callback and calls it once per thing it adds, in the style of
``llm`` and ``datasette``::

    import toolkit

    @toolkit.hookimpl
    def register_metrics(register):
        register("gap", gap_metric, description="C mean minus R mean")

``register(name, obj, **metadata)`` takes optional keyword metadata: ``description`` (shown by
``toolkit plugins``) and whatever the kind documents below. Names are unique across all plugins.
"""
from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("toolkit")
hookimpl = pluggy.HookimplMarker("toolkit")

Register = Callable[..., None]


@hookspec
def register_models(register: Register) -> None:
    """Register model architectures.

    Call ``register(name, factory)`` with ``factory(num_classes, in_chans, image_size)`` returning a
    fresh, randomly initialised ``torch.nn.Module`` that follows timm's feature protocol:

    - ``forward_features(x)`` maps images ``(N, in_chans, image_size, image_size)`` to feature maps;
    - ``forward_head(x, pre_logits=False)`` maps those to logits ``(N, num_classes)``, or with
      ``pre_logits=True`` to the penultimate feature vectors ``(N, F)`` (any shape that flattens to
      ``N`` rows; these are the features ``C`` and ``R`` compare);
    - ``forward(x)`` returns the logits.

    The three arguments are positional ints; ``image_size`` is the images' height. The factory is
    called after ``torch.manual_seed(seed)``, so its initialisation is reproducible; it should not
    download weights. The toolkit moves the model to the device, trains it with its own loop (SGD,
    cross-entropy on the logits) and probes it in ``eval()`` mode with frozen weights.

    The model receives inputs already normalised by the dataset's mean and std: the toolkit wraps it
    (``toolkit.model.NormalizedClassifier``) so that images stay in [0, 1] pixel space during
    synthesis. Do not normalise again inside the model.

    Metadata: ``description``; ``prefix=True`` registers a family (``"timm:"``): ``factory`` is then
    called with the rest of the name (``"resnet34"`` for ``"timm:resnet34"``) and returns the real
    factory, or raises :class:`toolkit.UsageError` for a name it does not know.
    """


@hookspec
def register_datasets(register: Register) -> None:
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
    reported as the dataset's failure, naming the plugin. Everything is held in memory.

    Metadata: ``description``; ``defaults``, a dict of analysis options for this dataset, for
    example ``{"lr": 0.01, "epochs": 15}``. The user's explicit options win over it; the options a
    dataset may set are ``toolkit.config.DATASET_DEFAULTABLE`` (``lr``, ``epochs``,
    ``crop_padding``, ``flip``, ``train_lr``, ``train_batch_size``, ``max_steps``).
    """


@hookspec
def register_synthesizers(register: Register) -> None:
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
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register metrics computed from a results dataset.

    Call ``register(name, metric)`` with ``metric(ds, **options)`` taking the ``xarray.Dataset``
    built so far and returning a ``dict`` of new ``xarray.DataArray`` variables or a Dataset, which is
    merged into the results (a variable of the same name is replaced). ``ds`` holds ``features``
    ``(interval, seed, k, j, feature)`` and the per-image records ``steps``, ``loss``,
    ``converged``, ``predicted``, ``confidence`` ``(interval, seed, k, j)``, ``test_accuracy`` and
    ``train_size`` ``(interval)``, plus every variable of the metrics listed before it (``C`` and
    ``R`` ``(interval, seed, k, j, i)`` after ``cosine``). Use those dimension names, so results
    stay labelled; give each variable ``long_name`` and ``units`` attributes. Do not modify ``ds``.

    ``options`` are the user's ``metric_options[name]`` (``--metric_options '{"name": {...}}'``),
    passed as keyword arguments. Before any training the toolkit runs the whole metric chain once
    on a small made-up dataset (2 intervals, 2 seeds, 3 classes, 4 features), so a metric that
    cannot run fails in seconds; keep the metric cheap and pure.

    Metadata: ``description``; ``check_options``, a callable taking the same keyword options,
    called before any training; it raises :class:`toolkit.UsageError` for options the metric
    cannot use.
    """


def hook_names() -> list[str]:
    """Names of every hook, in definition order."""
    return [name for name, obj in globals().items() if hasattr(obj, "toolkit_spec")]


__all__ = ["hookimpl", "hookspec", "hook_names", "Register"]
