"""The zoo's small architectures, as a toolkit plugin: ``cnn:<width>`` and ``mlp:<width>``.

Load it without packaging: ``TOOLKIT_PLUGINS=examples/zoo-digits/zoo_models.py``. Both follow
timm's feature protocol (``forward_features``, ``forward_head(x, pre_logits)``), as every toolkit
model must, so the toolkit can train, probe and rank them like its built-in models.
"""
from __future__ import annotations

import re

import torch
from torch import nn

import toolkit


class SmallCNN(nn.Module):
    """Three 3x3 convolutions (width w, 2w, 4w) with BatchNorm, one 2x2 max pool, global average
    pooling and a linear head: the penultimate features are the 4w pooled channels."""

    def __init__(self, num_classes: int, in_chans: int, image_size: int, width: int):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        self.body = nn.Sequential(*block(in_chans, width), *block(width, 2 * width), nn.MaxPool2d(2),
                                  *block(2 * width, 4 * width))
        self.num_features = 4 * width
        self.fc = nn.Linear(4 * width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class MLP(nn.Module):
    """Two hidden layers of width w with ReLU on the flattened pixels; features: the second."""

    def __init__(self, num_classes: int, in_chans: int, image_size: int, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size ** 2, width), nn.ReLU(),
                                  nn.Linear(width, width), nn.ReLU())
        self.num_features = width
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _family(cls: type[nn.Module], prefix: str):
    def with_width(spec: str):
        if not re.fullmatch(r"[1-9][0-9]{0,3}", spec):
            raise toolkit.UsageError(f"model {prefix}{spec}: the width after '{prefix}' must be a "
                                     f"whole number from 1 to 9999, e.g. {prefix}32")

        def factory(num_classes: int, in_chans: int, image_size: int) -> nn.Module:
            return cls(num_classes, in_chans, image_size, int(spec))
        return factory
    return with_width


@toolkit.hookimpl
def register_models(register):
    register("cnn:", _family(SmallCNN, "cnn:"), prefix=True,
             description="the zoo's small CNN of width N (3 conv layers): cnn:N")
    register("mlp:", _family(MLP, "mlp:"), prefix=True,
             description="the zoo's MLP with two hidden layers of width N: mlp:N")
