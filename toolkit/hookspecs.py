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
      ``pre_logits=True`` to the penultimate feature vectors ``(N, F)``;
    - ``forward(x)`` returns the logits.

    The model receives inputs normalised by the dataset's mean and std: the toolkit wraps it so that
    images stay in [0, 1] pixel space during synthesis. Metadata: ``prefix=True`` registers a family
    (``"timm:"``) whose object is called with the rest of the name and returns the factory.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets.

    Call ``register(name, loader)`` with ``loader(root, download)`` returning a
    :class:`toolkit.ImageDataset` (uint8 ``N x C x H x W`` train and test tensors, int64 labels,
    class names, per-channel mean and std of the training pixels in [0, 1]). ``root`` is a folder
    (``pathlib.Path``) where the files are or should go; ``download`` says whether fetching them is
    allowed. Raise :class:`toolkit.UsageError` with a one-line message when the data are missing.

    Metadata ``defaults`` is a dict of analysis options for this dataset, for example
    ``{"lr": 0.01, "epochs": 15}``; the user's explicit options win over it.
    """


@hookspec
def register_synthesizers(register: Register) -> None:
    """Register image synthesis strategies.

    Call ``register(name, synthesizer)`` with ``synthesizer(model, start, targets, settings,
    progress=None)`` that returns a :class:`toolkit.SynthesisResult`:

    - ``model``: the normalising model wrapper, in ``eval()`` mode with frozen weights; it maps
      pixels in [0, 1] to logits;
    - ``start``: float32 images ``(N, C, H, W)`` in [0, 1] on the model's device;
    - ``targets``: int64 ``(N,)`` classes to push each image into;
    - ``settings``: a :class:`toolkit.SynthesisSettings` (learning rate, loss threshold, ...);
    - ``progress``: optional callable receiving the number of images just finished.
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register metrics computed from a results dataset.

    Call ``register(name, metric)`` with ``metric(ds, **options)`` taking the ``xarray.Dataset``
    built so far (``features`` and the per-image records, plus every variable of the metrics listed
    before it) and returning a ``dict`` of new ``xarray.DataArray`` variables or a Dataset, which is
    merged into the results. ``options`` are the user's ``metric_options[name]``.

    Metadata ``check_options`` is a callable taking the same keyword options; it is called before
    any training and raises :class:`toolkit.UsageError` for options the metric cannot use.
    """


def hook_names() -> list[str]:
    """Names of every hook, in definition order."""
    return [name for name, obj in globals().items() if hasattr(obj, "toolkit_spec")]


__all__ = ["hookimpl", "hookspec", "hook_names", "Register"]
