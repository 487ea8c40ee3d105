"""Training the classifier through the stages the study probes it at (DESIGN.md 1.6)."""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.config import FALLBACKS, OPTION
from toolkit.data import ImageDataset
from toolkit.distributed import World
from toolkit.errors import UsageError
from toolkit.hardware import check_stage_precision
from toolkit.progress import ProgressBar, progress_bar


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    # The defaults are the analysis options' (toolkit.config: train_lr, train_batch_size, ...).
    epochs: int
    lr: float = FALLBACKS["train_lr"]
    batch_size: int = FALLBACKS["train_batch_size"]
    momentum: float = OPTION["momentum"].default
    weight_decay: float = OPTION["weight_decay"].default
    crop_padding: int = FALLBACKS["crop_padding"]
    flip: bool = FALLBACKS["flip"]
    precision: str = "fp32"  # "bf16": forward and loss under bfloat16 autocast (analyze resolves auto)

    def __post_init__(self) -> None:
        check_stage_precision("TrainingSettings", self.precision)

    def optimizer(self, parameters: Iterable[torch.Tensor]) -> torch.optim.SGD:
        """The trainer's optimizer over ``parameters``: SGD with weight decay, and Nesterov
        momentum where momentum is on; the trainer sets its learning rate at every step (cosine)."""
        return InPlaceSGD(parameters, lr=self.lr, momentum=self.momentum,
                          weight_decay=self.weight_decay, nesterov=self.momentum > 0)


class InPlaceSGD(torch.optim.SGD):
    """``torch.optim.SGD``, bit for bit, that computes each update in its gradient's memory.

    torch's single-tensor SGD makes two new tensors a parameter and step (the gradient plus weight
    decay, then plus the Nesterov term); this one adds both into the gradient itself, the same
    operations in the same order, so weights, momentum buffers and ``state_dict`` are exactly
    torch's, and checkpoints pass between the two. Afterwards each ``.grad`` is overwritten (with
    the update it applied, under the trainer's Nesterov momentum), not the gradient any more (the
    trainer sets gradients to None before every backward). On a
    Zen 4 EPYC the demo's training step (ResNet18, 8x8 digits, batch 32) took 0.96x the time and
    its whole training 0.97x (docs/performance.md). Where that path does not apply, it is torch's
    own ``step``: off the CPU (where torch runs its multi-tensor kernels), and for a closure,
    dampening, ``maximize``, ``foreach``, ``fused``, a tensor learning rate or weight decay, or a
    sparse gradient.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        if closure is not None or not all(map(self._in_place, self.param_groups)):
            # torch's step itself: once an SGD exists, SGD.step is wrapped to run the optimizer
            # hooks, which this class's own (wrapped) step has run already
            torch_step = torch.optim.SGD.step
            return getattr(torch_step, "__wrapped__", torch_step)(self, closure)
        for group in self.param_groups:
            decay, momentum, lr = group["weight_decay"], group["momentum"], group["lr"]
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                if decay != 0:
                    grad.add_(param, alpha=decay)
                if momentum != 0:
                    state = self.state[param]
                    buffer = state.get("momentum_buffer")
                    if buffer is None:
                        buffer = state["momentum_buffer"] = grad.detach().clone()
                    else:
                        buffer.mul_(momentum).add_(grad)
                    if group["nesterov"]:
                        grad.add_(buffer, alpha=momentum)
                    else:
                        grad = buffer
                param.add_(grad, alpha=-lr)
        return None

    @staticmethod
    def _in_place(group: dict) -> bool:
        return (group["dampening"] == 0 and not group["maximize"] and not group["foreach"]
                and not group["fused"] and not group.get("differentiable")
                and not isinstance(group["lr"], torch.Tensor)
                and not isinstance(group["weight_decay"], torch.Tensor)
                and all(p.device.type == "cpu" and (p.grad is None or not p.grad.is_sparse)
                        for p in group["params"]))


@dataclasses.dataclass(frozen=True)
class Stage:
    """The model as it stands at one training interval."""

    fraction: float
    train_size: int
    test_accuracy: float
    finite: bool = True  # every training loss of the stage was finite


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


class Trainer:
    """Trains ``model`` in place through the intervals, one stage per :meth:`next_stage`.

    Schedule ``data``: stage t trains ``epochs`` epochs on a nested stratified subset holding
    fraction t of the training set, continuing from the previous stage, with a fresh cosine learning
    rate per stage. After each stage the BatchNorm statistics are recomputed over the images seen
    (:func:`recompute_batchnorm`). Schedule ``epochs``: one cosine run of ``epochs`` epochs on the
    whole set, interrupted at fraction t of its steps. The consumer may use the model between
    stages (in eval mode); training resumes in train mode.

    :meth:`state_dict` holds everything the next stage depends on (weights, optimizer, random
    generator, position), so a trainer restored with :meth:`load_state_dict` trains the remaining
    stages exactly as an uninterrupted one would.
    """

    def __init__(self, model: nn.Module, data: ImageDataset, intervals: Sequence[float],
                 schedule: str, settings: TrainingSettings, seed: int, device: torch.device | str,
                 world: World = World()):
        self.model, self.data, self.settings, self.device = model, data, settings, device
        self.world = world
        # Data-parallel training: every rank draws the same batches and augmentations from the same
        # generator, takes its slice of each batch, and DistributedDataParallel averages the
        # gradients, so all ranks hold the same weights (and state) at every step.
        self._forward = model
        if world.distributed:
            if settings.batch_size < world.size:
                raise UsageError(f"--train_batch_size {settings.batch_size} is smaller than the "
                                 f"{world.size} ranks; each rank needs at least one image per batch")
            if torch.device(device).type == "cuda":  # BatchNorm over the whole batch (CUDA only)
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self._forward = nn.parallel.DistributedDataParallel(
                model, device_ids=[torch.device(device).index] if torch.device(device).type == "cuda"
                else None)
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = settings.optimizer(model.parameters())
        labels = data.train_labels
        # The whole training set lives on the device as uint8 (a quarter of float32's size): a batch
        # is one index, one conversion and one batched augmentation, with no host copies.
        self._train_x, self._train_y = data.train_images.to(device), data.train_labels.to(device)
        self._test_x = data.test_images.to(device)
        self._mixed = settings.precision == "bf16"
        # One entry per stage: (run, fraction, training subset, step at which the stage ends,
        # steps of the whole run).
        self._stops: list[tuple[int, float, torch.Tensor, int, int]] = []
        if schedule == "data":
            subsets = nested_stratified_subsets(labels, intervals, self.generator)
            for run, (fraction, subset) in enumerate(zip(intervals, subsets)):
                total = self._steps_per_epoch(subset) * settings.epochs
                self._stops.append((run, fraction, subset, total, total))
        else:
            everything = torch.arange(len(labels))
            total = self._steps_per_epoch(everything) * settings.epochs
            self._stops += [(0, f, everything, max(1, round(f * total)), total) for f in intervals]
        self.stage_index = 0      # the next stage to train
        self._step = 0            # steps taken in the current run
        self._order = torch.empty(0, dtype=torch.int64)  # this epoch's shuffled subset

    def _steps_per_epoch(self, subset: torch.Tensor) -> int:
        # Full batches only (the rest of each shuffled epoch waits for the next): a last batch of
        # one image would break BatchNorm, and tiny ones make noisy steps.
        return max(1, len(subset) // self.settings.batch_size)

    @property
    def done(self) -> bool:
        return self.stage_index >= len(self._stops)

    def next_stage(self, progress: Callable[[str, int], ProgressBar] = progress_bar) -> Stage:
        """Train up to the next interval and return the model's :class:`Stage` there."""
        if self.done:
            raise RuntimeError("every stage is trained")
        run, fraction, subset, mark, total = self._stops[self.stage_index]
        if self.stage_index and self._stops[self.stage_index - 1][0] != run:
            self._step = 0
        settings, model = self.settings, self.model
        per_epoch = self._steps_per_epoch(subset)
        train_x, train_y = self._train_x, self._train_y
        bar = progress(f"train {fraction:.0%} (interval {self.stage_index + 1}/{len(self._stops)})",
                       mark - self._step)
        model.train()
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        while self._step < mark:
            offset = self._step % per_epoch
            if offset == 0:
                self._order = subset[torch.randperm(len(subset), generator=self.generator)]
            batch = self._order[offset * settings.batch_size:(offset + 1) * settings.batch_size]
            batch = batch.to(self.device)
            for group in self.optimizer.param_groups:
                group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * self._step / total))
            images = augment(to_pixels(train_x[batch], self.device), settings.crop_padding,
                             settings.flip, self.generator)
            labels = train_y[batch]
            if self.world.distributed:
                images = images.tensor_split(self.world.size)[self.world.rank]
                labels = labels.tensor_split(self.world.size)[self.world.rank]
            with (torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)
                  if self._mixed else contextlib.nullcontext()):
                logits = self._forward(images)
            if self.world.distributed:
                # DDP averages over ranks: scale each slice's sum so the average is the batch mean.
                loss = F.cross_entropy(logits.float(), labels, reduction="sum") * (
                    self.world.size / len(batch))
            else:
                loss = F.cross_entropy(logits.float(), labels)
            finite &= torch.isfinite(loss)  # checked once per stage: no host sync per step
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self._step += 1
            bar.update(1)
        bar.close()
        recompute_batchnorm(model, train_x[subset.to(self.device)], self.device)
        self.stage_index += 1
        return Stage(fraction, len(subset), accuracy(model, self._test_x, self.data.test_labels,
                                                     self.device), self.world.all_true(bool(finite)))

    def state_dict(self) -> dict:
        """Weights, optimizer, generator and position: tensors and numbers only (weights-only safe)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "stage_index": self.stage_index,
                "step": self._step, "order": self._order.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.stage_index, self._step, self._order = state["stage_index"], state["step"], state["order"]


def train_through_intervals(model: nn.Module, data: ImageDataset, intervals: Sequence[float],
                            schedule: str, settings: TrainingSettings, seed: int,
                            device: torch.device | str,
                            progress: Callable[[str, int], ProgressBar] = progress_bar,
                            ) -> Iterator[Stage]:
    """Train ``model`` in place and yield a :class:`Stage` whenever it reaches an interval
    (see :class:`Trainer`, which this drives from start to end)."""
    trainer = Trainer(model, data, intervals, schedule, settings, seed, device)
    while not trainer.done:
        yield trainer.next_stage(progress)
