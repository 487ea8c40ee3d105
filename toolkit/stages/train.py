"""The model at each interval: trained there (or resumed from the work directory), or given.

Training is data-parallel under torchrun (every rank holds the same state, rank 0 saves it);
``--checkpoints`` replaces training by one file of weights per interval.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Iterator

import torch

from toolkit.config import AnalysisConfig
from toolkit.data import ImageDataset
from toolkit.errors import NumericalError, PluginError, UsageError
from toolkit.hardware import stage_precision
from toolkit.model import NormalizedClassifier, skip_padding_taps
from toolkit.plugins import Registration, blamed_on
from toolkit.stages.context import Run
from toolkit.training import Stage, Trainer, TrainingSettings, accuracy
from toolkit.workdir import WorkDir, checkpoint_name, load_checkpoint, model_weights


def training_settings(config: AnalysisConfig) -> TrainingSettings:
    return TrainingSettings(epochs=config.epochs, lr=config.train_lr,
                            batch_size=config.train_batch_size, momentum=config.momentum,
                            weight_decay=config.weight_decay, crop_padding=config.crop_padding,
                            flip=config.flip,
                            precision=stage_precision(config.precision, "training"))


def build_model(registration: Registration, data: ImageDataset) -> NormalizedClassifier:
    """A fresh model for ``data`` from a model plugin, wrapped to take [0, 1] pixels, its plain
    convolutions skipping the kernel taps that read only padding (:func:`skip_padding_taps`)."""
    shape = f"{data.in_chans}x{data.image_size}x{data.image_size}"
    with blamed_on(registration, f"cannot be built for {data.num_classes} classes of {shape} images"):
        net = registration.obj(data.num_classes, data.in_chans, data.image_size)
        model = NormalizedClassifier(skip_padding_taps(net), data.mean, data.std)
    check_features(model, registration, data)
    return model


def check_features(model: NormalizedClassifier, registration: Registration, data: ImageDataset) -> None:
    """One forward of two images: ``forward_head`` must take ``pre_logits`` and give features, not
    logits (a ``PluginError`` of one line naming the plugin, before any training).

    The images come from a generator of their own and the model runs in eval mode without
    gradients, so the check changes no random state, no BatchNorm statistic and no number.
    """
    name = f"model {registration.name!r} (plugin {registration.plugin!r})"
    images = torch.rand((2, data.in_chans, data.image_size, data.image_size),
                        generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), blamed_on(registration, "failed on a forward pass of two images"):
            hidden = model.forward_features(images)
            try:  # the wrapper passes pre_logits on in both calls
                features = model.forward_head(hidden, pre_logits=True)
                logits = model.forward_head(hidden)
            except TypeError as exc:
                if "pre_logits" not in str(exc):
                    raise
                raise PluginError(f"{name}: forward_head does not accept pre_logits=True, which must "
                                  "return the penultimate features (timm's feature protocol)") from None
    finally:
        model.train(was_training)
    features = features.flatten(1)
    width = getattr(model.model, "num_features", None)
    # timm's models with a hidden head layer (MobileNetV3) give its width, head_hidden_size
    widths = {w for w in (width, getattr(model.model, "head_hidden_size", None)) if isinstance(w, int)}
    same = features.shape == logits.shape and torch.equal(features, logits)
    if same or (widths and features.shape[1] == data.num_classes and features.shape[1] not in widths):
        raise PluginError(f"{name}: forward_head(x, pre_logits=True) returns the logits "
                          f"({features.shape[1]} values, one per class), not the penultimate "
                          f"features{f' ({width} = its num_features)' if isinstance(width, int) else ''}; "
                          "it must return the input of the final classifier layer")
    if widths and features.shape[1] not in widths:
        raise PluginError(f"{name}: forward_head(x, pre_logits=True) returns {features.shape[1]} "
                          f"values per image, but its num_features says {width}; the features must "
                          "be the input of the final classifier layer, num_features wide")


def new_model(run: Run) -> NormalizedClassifier:
    """The run's model before any training, its initial weights drawn from the run's seed."""
    torch.manual_seed(run.config.seed_start)
    model = build_model(run.plan.model, run.data).to(run.device)
    return model.to(memory_format=torch.channels_last)


def intervals(run: Run, model: NormalizedClassifier, work: WorkDir,
              checkpoints: str | os.PathLike | None = None) -> Iterator[Stage]:
    """``model`` at each interval in turn, with the :class:`Stage` it stands at there.

    The weights come from ``checkpoints`` when given; else from the training state the work
    directory holds for the interval, else from training there (then saved in the work directory).
    """
    config = run.config
    trainer = None if checkpoints is not None else Trainer(
        model, run.data, config.intervals, config.schedule, training_settings(config), config.seed_start,
        run.device, world=run.world)
    for fraction in config.intervals:
        clock = time.perf_counter()
        if trainer is None:
            yield load_weights(model, run.plan.model, Path(checkpoints) / checkpoint_name(fraction),
                               run.data, run.device)
        elif (state := work.load_training(fraction)) is not None:
            trainer.load_state_dict(state)
            # the time the run that trained it spent (a resumed run counts it as its own)
            run.seconds["training"] += float(state.get("spent", {}).get("training", 0.0))
            yield Stage(**state["stage"])
        else:
            stage = trainer.next_stage(run.bar)
            seconds = time.perf_counter() - clock
            run.seconds["training"] += seconds
            if not stage.finite and config.nonfinite == "stop":
                raise NumericalError(f"training reached NaN or Inf losses before interval "
                                     f"{fraction:.0%}; lower --train_lr, or pass --nonfinite record "
                                     "to keep going")
            if run.world.main:  # every rank holds the same state
                work.save_training(fraction, {**trainer.state_dict(), "stage": dataclasses.asdict(stage),
                                              "spent": {"training": seconds}})
            yield stage


def load_weights(model: NormalizedClassifier, registration: Registration, path: Path,
                 data: ImageDataset, device: torch.device) -> Stage:
    """Load one interval's weights from ``path`` into ``model`` and return the :class:`Stage` they give.

    ``path`` holds a ``state_dict`` of the whole classifier or of the model plugin's network alone,
    or a work directory's training state (whose stage record gives the training-set size; for the
    others it is unknown, recorded as -1).
    """
    state = load_checkpoint(path)
    weights = model_weights(state, path)
    whole = {"mean", "std"} <= set(weights) and all(
        name.startswith("model.") or name in ("mean", "std") for name in weights)
    shape = f"{data.in_chans}x{data.image_size}x{data.image_size}"
    try:
        (model if whole else model.model).load_state_dict(weights)
    except RuntimeError as exc:
        problem = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise UsageError(f"checkpoint {path} does not fit model {registration.name!r} for "
                         f"{data.num_classes} classes of {shape} images: {problem}") from None
    model.to(device)
    recorded = state.get("stage") if isinstance(state.get("stage"), dict) else {}
    return Stage(fraction=float(path.stem.split("-", 1)[1]),
                 train_size=int(recorded.get("train_size", -1)),
                 test_accuracy=accuracy(model, data.test_images, data.test_labels, device))
