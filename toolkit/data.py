"""The in-memory image dataset every dataset plugin returns."""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Callable, Hashable, Iterator, Sequence

import torch


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled image classification dataset held in memory.

    Attributes:
        name: short identifier, e.g. ``"cifar10"``.
        train_images, test_images: uint8 tensors ``(N, C, H, W)``.
        train_labels, test_labels: int64 tensors ``(N,)`` with values in ``[0, num_classes)``.
        class_names: one unique name per class, in label order.
        mean, std: per-channel statistics of the training pixels scaled to [0, 1]; leave them out
            to have them computed from ``train_images``.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        set_ = lambda field, value: object.__setattr__(self, field, value)  # noqa: E731 (frozen)
        set_("class_names", tuple(str(c) for c in self.class_names))
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
                raise ValueError(f"{self.name}: {split}_images must be a uint8 tensor (N, C, H, W)")
            if images.shape[1:] != self.train_images.shape[1:]:
                raise ValueError(f"{self.name}: train and test images differ in shape: "
                                 f"{tuple(self.train_images.shape[1:])} vs {tuple(images.shape[1:])}")
            if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 \
                    or labels.shape != images.shape[:1]:
                raise ValueError(f"{self.name}: {split}_labels must be int64 with one label per image")
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
                raise ValueError(f"{self.name}: {split}_labels must lie in [0, {len(self.class_names)})")
        if len(self.train_labels) == 0 or len(self.test_labels) == 0:
            raise ValueError(f"{self.name}: the train and test splits must not be empty")
        if len(set(self.class_names)) != len(self.class_names) or len(self.class_names) < 2:
            raise ValueError(f"{self.name}: class_names must hold at least 2 unique names")
        if self.mean is None or self.std is None:
            pixels = self.train_images.transpose(0, 1).reshape(self.in_chans, -1).double() / 255
            set_("mean", tuple(pixels.mean(1).tolist()) if self.mean is None else self.mean)
            set_("std", tuple(pixels.std(1).clamp_min(1e-6).tolist()) if self.std is None else self.std)
        set_("mean", _per_channel(self.mean, self.in_chans, "mean"))
        set_("std", _per_channel(self.std, self.in_chans, "std"))
        if min(self.std) <= 0:
            raise ValueError(f"{self.name}: std must be positive, got {self.std}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> int:
        """Height of the images (the model contract takes square images' side)."""
        return self.train_images.shape[2]

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, classes={self.num_classes}, "
                f"image={tuple(self.train_images.shape[1:])}, train={len(self.train_labels)}, "
                f"test={len(self.test_labels)})")


def _per_channel(values: Sequence[float], channels: int, what: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) != channels:
        raise ValueError(f"{what} needs one value per channel ({channels}), got {len(values)}")
    return values


_REUSED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("toolkit_reused_datasets", default=None)


@contextlib.contextmanager
def reusing_datasets() -> Iterator[None]:
    """Within this block, a dataset is read once and handed out again to every run that asks for
    the same one (the same plugin, root and download setting): ``rank`` reads CIFAR-10 once for all
    its models instead of once per model. The runs share one :class:`ImageDataset`, which the
    toolkit never modifies. Outside such a block every run reads its data afresh, and nothing is
    kept once the block ends."""
    token = _REUSED.set({} if _REUSED.get() is None else _REUSED.get())
    try:
        yield
    finally:
        _REUSED.reset(token)


def reused(key: Hashable, load: Callable[[], ImageDataset]) -> ImageDataset:
    """``load()``, or inside :func:`reusing_datasets` the dataset already loaded under ``key``."""
    kept = _REUSED.get()
    if kept is None:
        return load()
    if key not in kept:
        kept[key] = load()
    return kept[key]
