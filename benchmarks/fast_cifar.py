"""What a fast CIFAR-10 network costs here: the toolkit's trainer on a small airbench-style net.

    python benchmarks/fast_cifar.py [--archive ../shared/data/cifar10-jpeg.zip] [--epochs 4]
                                    [--precision bf16] [--threads N]

For planning a CIFAR-10 model zoo (issue 16): the whole of CIFAR-10 (the JPEG zip, read by the
``imagefolder`` dataset), a network in the spirit of airbench (Jordan, 2024: a 2x2 stem, three
conv-pool-BatchNorm-GELU blocks of widths 64, 256, 256, a max-pooled linear head; about 0.7 GFLOP
per training image) trained by :func:`toolkit.training.train_through_intervals` (SGD, one cosine
schedule, batch 512, crop and flip, weight decay 5e-4), without airbench's other speed tricks
(whitening, lookahead, label smoothing, test-time augmentation). Prints the time to read the
data, then the training time (BatchNorm recompute and test pass included) and test accuracy.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from toolkit.model import NormalizedClassifier
from toolkit.plugins import get_registry
from toolkit.training import TrainingSettings, train_through_intervals

ROOT = Path(__file__).resolve().parents[1]


class FastNet(nn.Module):
    """A small airbench-style classifier following timm's feature protocol."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths=(64, 256, 256)):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
                                 nn.BatchNorm2d(cout), nn.GELU(),
                                 nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.GELU())

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if not args.archive.is_file():
        raise SystemExit(f"fast_cifar.py: no archive at {args.archive}; pass --archive PATH")
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    data = get_registry("dataset").get("imagefolder").obj(args.archive, False)
    print(f"read {len(data.train_labels):,} training and {len(data.test_labels):,} test images in "
          f"{time.perf_counter() - began:.0f} s", flush=True)
    torch.manual_seed(0)
    model = NormalizedClassifier(FastNet(data.num_classes, data.in_chans), data.mean, data.std)
    model = model.to(memory_format=torch.channels_last)
    settings = TrainingSettings(epochs=args.epochs, lr=0.2, batch_size=512, crop_padding=4, flip=True,
                                weight_decay=5e-4, precision=args.precision)
    began = time.perf_counter()
    for stage in train_through_intervals(model, data, [1.0], "epochs", settings, 0, "cpu"):
        print(f"{args.epochs} epoch(s), {args.precision}, {torch.get_num_threads()} thread(s): "
              f"{time.perf_counter() - began:.0f} s, test accuracy {stage.test_accuracy:.3f}")


if __name__ == "__main__":
    main()
