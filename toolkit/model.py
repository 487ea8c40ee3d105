"""The wrapper that puts dataset normalisation inside a model, feature extraction, and the cost of
one synthesis step."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode


class NormalizedClassifier(nn.Module):
    """A classifier that takes pixels in [0, 1] and normalises them by the dataset's mean and std.

    It keeps timm's feature protocol, so ``forward_head(forward_features(x), pre_logits=True)`` is the
    penultimate feature vector of images ``x`` in pixel space. Its ``state_dict`` holds the inner
    model under ``model.`` and the statistics as buffers.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        for method in ("forward_features", "forward_head"):
            if not callable(getattr(model, method, None)):
                raise TypeError(f"{type(model).__name__} lacks {method}(); models must follow timm's "
                                "feature protocol (forward_features, forward_head(x, pre_logits))")
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features((x - self.mean) / self.std)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.model.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate feature vectors ``(N, F)``: the input of the final classifier layer."""
        return self.forward_head(self.forward_features(x), pre_logits=True).flatten(1)


@torch.no_grad()
def extract_features(model: NormalizedClassifier, images: torch.Tensor, batch_size: int = 256,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Penultimate features of ``images`` (pixels in [0, 1]) in eval mode, as float32 on the CPU."""
    was_training = model.training
    model.eval()
    try:
        chunks = [model.features(images[start:start + batch_size].to(device)).float().cpu()
                  for start in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


class frozen:
    """Context manager: the model in ``eval()`` with ``requires_grad`` off, restored on exit."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> nn.Module:
        self._training = self.model.training
        self._grad = [p.requires_grad for p in self.model.parameters()]
        self.model.eval().requires_grad_(False)
        return self.model

    def __exit__(self, *exc) -> None:
        for p, flag in zip(self.model.parameters(), self._grad):
            p.requires_grad_(flag)
        self.model.train(self._training)


def step_flops(model: nn.Module, shape: Sequence[int], device: torch.device | str = "cpu") -> float:
    """FLOPs of one image's synthesis step on ``model``, for images of ``shape`` ``(C, H, W)``: the
    forward pass, a per-image cross-entropy and the backward pass to the input (the weights are
    frozen, so it computes no weight gradients), as PyTorch's FLOP counter counts them (the matrix
    products and convolutions), on ``device``, where the model lies. The model's weights, mode and
    gradients are left as they were."""
    x = torch.zeros(2, *shape, device=device).contiguous(memory_format=torch.channels_last)
    with frozen(model), FlopCounterMode(display=False) as counter:
        x.requires_grad_(True)
        loss = F.cross_entropy(model(x), torch.zeros(2, dtype=torch.int64, device=device),
                               reduction="none")
        loss.sum().backward()
    return counter.get_total_flops() / 2
