"""What a fast CIFAR-10 network costs here: the toolkit's trainer on the zoo's ``fast:64``.

    python benchmarks/fast_cifar.py [--archive ../shared/data/cifar10-jpeg.zip] [--epochs 4]
                                    [--precision bf16] [--threads N]

For planning a CIFAR-10 model zoo (issue 16): the whole of CIFAR-10 (the JPEG zip, read by the
``imagefolder`` dataset), the CIFAR-10 zoo's ``fast:64`` (``examples/zoo-cifar10/zoo_models.py``:
airbench-style, Jordan 2024, about 0.7 GFLOP per training image) trained by :func:`toolkit.training.train_through_intervals` (SGD, one cosine
schedule, batch 512, crop and flip, weight decay 5e-4), without airbench's other speed tricks
(whitening, lookahead, label smoothing, test-time augmentation). Prints the time to read the
data, then the training time (BatchNorm recompute and test pass included) and test accuracy.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ["TOOLKIT_PLUGINS"] = ",".join(filter(None, [os.environ.get("TOOLKIT_PLUGINS"),
                                                       str(ROOT / "examples/zoo-cifar10/zoo_models.py")]))

from toolkit.model import NormalizedClassifier  # noqa: E402
from toolkit.plugins import get_registry  # noqa: E402
from toolkit.training import TrainingSettings, train_through_intervals  # noqa: E402


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
    net = get_registry("model").get("fast:64").obj(data.num_classes, data.in_chans, data.image_size)
    model = NormalizedClassifier(net, data.mean, data.std)
    model = model.to(memory_format=torch.channels_last)
    settings = TrainingSettings(epochs=args.epochs, lr=0.2, batch_size=512, crop_padding=4, flip=True,
                                weight_decay=5e-4, precision=args.precision)
    began = time.perf_counter()
    for stage in train_through_intervals(model, data, [1.0], "epochs", settings, 0, "cpu"):
        print(f"{args.epochs} epoch(s), {args.precision}, {torch.get_num_threads()} thread(s): "
              f"{time.perf_counter() - began:.0f} s, test accuracy {stage.test_accuracy:.3f}")


if __name__ == "__main__":
    main()
