"""What folding BatchNorm into the convolutions buys the ``prototype`` synthesizer.

    python benchmarks/fold.py [--rounds 6] [--threads 1]

Times the same fixed-step synthesis (ResNet18 with the CIFAR stem, random weights and BatchNorm
statistics, auto micro-batch) with folding on and off, alternating, at 32x32x3 and 8x8x1, and
prints the best rate of each and their ratio. Alternating rounds keep a change of the machine's
load from landing on one side only.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import toolkit
from toolkit.model import frozen
from toolkit.synthesis import auto_batch_size
from toolkit_plugins import synthesis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import resnet18  # noqa: E402 (the benchmarks' shared helpers)


def model_with_statistics(channels: int, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = resnet18(10, channels, size)
    for m in model.modules():  # statistics away from (0, 1), as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print("| images | batch | not folded (image-steps/s) | folded | speed-up |\n|---|---|---|---|---|")
    for channels, size in ((3, 32), (1, 8)):
        model = model_with_statistics(channels, size)
        batch = auto_batch_size("cpu", (channels, size, size))
        start, targets = torch.rand(batch, channels, size, size), torch.arange(batch) % 10
        settings = toolkit.SynthesisSettings(fixed_steps=args.steps, batch_size=batch)
        best = {False: 0.0, True: 0.0}
        with frozen(model):
            for fold in (False, True):  # warm-up, and the fold's one trace
                synthesis.FOLD_BATCHNORM = fold
                synthesis.prototype(model, start, targets, settings)
            for _ in range(args.rounds):
                for fold in (False, True):
                    synthesis.FOLD_BATCHNORM = fold
                    began = time.perf_counter()
                    synthesis.prototype(model, start, targets, settings)
                    rate = batch * (args.steps + 1) / (time.perf_counter() - began)
                    best[fold] = max(best[fold], rate)
        synthesis.FOLD_BATCHNORM = True
        print(f"| {channels}x{size}x{size} | {batch} | {best[False]:,.1f} | {best[True]:,.1f} | "
              f"{best[True] / best[False]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
