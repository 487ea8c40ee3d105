"""The CIFAR-10 zoo's fast network, as a toolkit plugin: ``fast:<width>``.

Load it without packaging: ``TOOLKIT_PLUGINS=examples/zoo-cifar10/zoo_models.py``. ``fast:64`` is
a small network in the spirit of airbench (Jordan, 2024, "94 % on CIFAR-10 in 3.29 seconds on a
single GPU"): a 2x2 stem, three conv-pool-BatchNorm-GELU blocks of widths w, 4w, 4w, a max-pooled
linear head with a fixed 1/8 output scale; about 0.7 GFLOP per training image at w = 64 on 32x32
inputs. airbench's other speed tricks (whitened stem, lookahead, label smoothing, test-time
augmentation) are left out: the zoo trains with the toolkit's own trainer.
"""
from __future__ import annotations

import re

import torch
from torch import nn

import toolkit


class FastNet(nn.Module):
    """A small airbench-style classifier following timm's feature protocol; its penultimate
    features are the 4w channels of the last block, max-pooled over space."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 64):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
                                 nn.BatchNorm2d(cout), nn.GELU(),
                                 nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.GELU())

        widths = (width, 4 * width, 4 * width)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 24, 2, bias=False), nn.BatchNorm2d(24), nn.GELU())
        self.body = nn.Sequential(block(24, widths[0]), block(widths[0], widths[1]),
                                  block(widths[1], widths[2]))
        self.num_features = widths[2]
        self.fc = nn.Linear(widths[2], num_classes, bias=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.amax((2, 3))
        return x if pre_logits else self.fc(x) / 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _with_width(spec: str):
    if not re.fullmatch(r"[1-9][0-9]{0,3}", spec):
        raise toolkit.UsageError(f"model fast:{spec}: the width after 'fast:' must be a whole number "
                                 "from 1 to 9999, e.g. fast:64")

    def factory(num_classes: int, in_chans: int, image_size: int) -> nn.Module:
        if image_size < 16:
            raise toolkit.UsageError(f"model fast:{spec} needs images of at least 16x16 (three "
                                     f"2x2 pools after a 2x2 stem); these are {image_size}x{image_size}")
        return FastNet(num_classes, in_chans, int(spec))
    return factory


@toolkit.hookimpl
def register_models(register):
    register("fast:", _with_width, prefix=True,
             description="the CIFAR-10 zoo's airbench-style network of widths N, 4N, 4N: fast:N")
