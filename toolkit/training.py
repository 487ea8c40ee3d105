"""Training the classifier through the stages the study probes it at (DESIGN.md 1.6)."""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.data import ImageDataset
from toolkit.progress import ProgressBar, progress_bar


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    epochs: int
    lr: float = 0.05
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    crop_padding: int = 0
    flip: bool = False
    precision: str = "fp32"  # "bf16": forward and loss under bfloat16 autocast


@dataclasses.dataclass(frozen=True)
class Stage:
    """The model as it stands at one training interval."""

    fraction: float
    train_size: int
    test_accuracy: float


def nested_stratified_subsets(labels: torch.Tensor, fractions: Sequence[float],
                              generator: torch.Generator) -> list[torch.Tensor]:
    """Index sets holding each fraction of every class, each one containing the ones before it.

    Every class keeps at least one image, so each stage sees every class.
    """
    orders = [torch.nonzero(labels == c).flatten() for c in range(int(labels.max()) + 1)]
    orders = [idx[torch.randperm(len(idx), generator=generator)] for idx in orders]
    return [torch.sort(torch.cat([idx[:max(1, round(f * len(idx)))] for idx in orders if len(idx)]))[0]
            for f in fractions]


def augment(images: torch.Tensor, crop_padding: int, flip: bool,
            generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding and random horizontal flip, batched on tensors."""
    n, _, h, w = images.shape
    if crop_padding:
        p = crop_padding
        padded = F.pad(images, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n, 1), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * p + 1, (n, 1), generator=generator).to(images.device)
        rows = (dy + torch.arange(h, device=images.device))[:, :, None]          # (n, h, 1)
        cols = (dx + torch.arange(w, device=images.device))[:, None, :]          # (n, 1, w)
        batch = torch.arange(n, device=images.device)[:, None, None]
        images = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if flip:
        mirrored = (torch.rand(n, generator=generator) < 0.5).to(images.device).view(n, 1, 1, 1)
        images = torch.where(mirrored, images.flip(3), images)
    return images.contiguous(memory_format=torch.channels_last)


def to_pixels(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 images to float32 pixels in [0, 1] on ``device``."""
    return images.to(device, non_blocking=True).float().div_(255)


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, images: torch.Tensor, device: torch.device | str,
                        batch_size: int = 512) -> None:
    """Set every BatchNorm's running statistics to the exact averages over ``images`` (uint8).

    The moving averages lag the weights, badly so after the few steps of an early stage on a small
    subset; probing runs the model in eval mode, so its statistics should match its weights (the
    same repair as ``torch.optim.swa_utils.update_bn``).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    starts = list(range(0, len(images), batch_size))
    if len(starts) > 1 and len(images) - starts[-1] == 1:
        starts.pop()  # BatchNorm cannot take a batch of one image in train mode
    for start, end in zip(starts, starts[1:] + [len(images)]):
        model(to_pixels(images[start:end], device).contiguous(memory_format=torch.channels_last))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             device: torch.device | str, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on uint8 ``images``."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(to_pixels(images[start:start + batch_size], device))
        correct += int((logits.argmax(1).cpu() == labels[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / len(labels)


def train_through_intervals(model: nn.Module, data: ImageDataset, intervals: Sequence[float],
                            schedule: str, settings: TrainingSettings, seed: int,
                            device: torch.device | str,
                            progress: Callable[[str, int], ProgressBar] = progress_bar,
                            ) -> Iterator[Stage]:
    """Train ``model`` in place and yield a :class:`Stage` whenever it reaches an interval.

    Schedule ``data``: stage t trains ``epochs`` epochs on a nested stratified subset holding
    fraction t of the training set, continuing from the previous stage, with a fresh cosine learning
    rate per stage. After each stage the BatchNorm statistics are recomputed over the images seen
    (:func:`recompute_batchnorm`). Schedule ``epochs``: one cosine run of ``epochs`` epochs on the whole set,
    interrupted at fraction t of its steps. The consumer may use the model between stages (in eval
    mode); training resumes in train mode.

    ``progress(description, total_steps)`` makes the progress bar of each stage.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay, nesterov=settings.momentum > 0)
    # The whole training set lives on the device as uint8 (a quarter of float32's size): a batch
    # is one index, one conversion and one batched augmentation, with no host copies.
    train_x, train_y = data.train_images.to(device), data.train_labels.to(device)
    test_x = data.test_images.to(device)
    mixed = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
             if settings.precision == "bf16" else contextlib.nullcontext())
    if schedule == "data":
        subsets = nested_stratified_subsets(data.train_labels, intervals, generator)
        runs = [(subset, [(fraction, settings.epochs)]) for fraction, subset in zip(intervals, subsets)]
    else:
        everything = torch.arange(len(train_y))
        runs = [(everything, [(fraction, None) for fraction in intervals])]

    for subset, stops in runs:
        # Full batches only (the rest of each shuffled epoch waits for the next): a last batch of
        # one image would break BatchNorm, and tiny ones make noisy steps.
        per_epoch = max(1, len(subset) // settings.batch_size)
        total = per_epoch * settings.epochs
        # Steps at which each stop is reached: the end of the run, or fraction t of it.
        marks = [(f, total if epochs else max(1, round(f * total))) for f, epochs in stops]
        step = 0
        for fraction, mark in marks:
            bar = progress(f"train {fraction:.0%}", mark - step)
            model.train()
            while step < mark:
                offset = step % per_epoch
                if offset == 0:
                    order = subset[torch.randperm(len(subset), generator=generator)]
                batch = order[offset * settings.batch_size:(offset + 1) * settings.batch_size].to(device)
                for group in optimizer.param_groups:
                    group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                images = augment(to_pixels(train_x[batch], device), settings.crop_padding,
                                 settings.flip, generator)
                with mixed:
                    logits = model(images)
                loss = F.cross_entropy(logits.float(), train_y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                bar.update(1)
            bar.close()
            recompute_batchnorm(model, train_x[subset.to(device)], device)
            yield Stage(fraction, len(subset), accuracy(model, test_x, data.test_labels, device))
