"""Throughput of the built-in synthesizer and metrics, on whatever machine runs it.

    python benchmarks/synthesis.py [--repeats 3] [--precision fp32,bf16]

Prints a Markdown table: input-gradient image-steps per second of the `prototype` synthesizer
(ResNet18 with the CIFAR stem, random weights, fixed steps so every run does the same work) on
digits-sized and CIFAR-sized images in each precision, each also in GFLOP/s (the step's FLOPs
counted by ``torch.utils.flop_counter``) as a fraction of the same precision's GEMM limit
measured right before it (``grid.gemm_gflops``), and the time of the `cosine` + `zscore` metrics
for a CIFAR-100-sized grid (n = 100, 512 features, one interval, one seed).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import toolkit
from toolkit.model import frozen, step_flops
from toolkit.plugins import get_registry
from toolkit.results import dataset_from_features
from toolkit_plugins.metrics import cosine, zscore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import DTYPES, gemm_gflops, machine, resnet18  # noqa: E402 (the benchmarks' shared helpers)


def synthesis_rate(channels: int, size: int, images: int, steps: int, batch: int, repeats: int,
                   precision: str = "fp32") -> tuple[float, float]:
    """(image-steps per second, FLOPs of one image-step)."""
    torch.manual_seed(0)
    model = resnet18(10, channels, size)
    synth = get_registry("synthesizer").get("prototype").obj
    settings = toolkit.SynthesisSettings(lr=0.1, fixed_steps=steps, batch_size=batch, precision=precision)
    start = torch.rand(images, channels, size, size)
    targets = torch.arange(images) % 10
    best = float("inf")
    with frozen(model):
        synth(model, start[:batch], targets[:batch], toolkit.SynthesisSettings(fixed_steps=2, precision=precision))  # warm-up
        for _ in range(repeats):
            began = time.perf_counter()
            synth(model, start, targets, settings)
            best = min(best, time.perf_counter() - began)
    return images * steps / best, step_flops(model, (channels, size, size))


def metric_seconds(n: int, features: int, repeats: int) -> float:
    ds = dataset_from_features(np.random.default_rng(0).random((1, 1, n, n, features), dtype=np.float32))
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        zscore(ds.assign(cosine(ds)))
        best = min(best, time.perf_counter() - began)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 or both: fp32,bf16")
    args = parser.parse_args()
    print(f"machine: {machine()}; best of {args.repeats}\n")
    print("| work | batch | precision | result | GFLOP/s | of the GEMM limit |\n|---|---|---|---|---|---|")
    for label, channels, size, images, steps in (("digits 1x8x8", 1, 8, 256, 10),
                                                 ("CIFAR 3x32x32", 3, 32, 128, 3)):
        for precision in args.precision.split(","):
            limit = gemm_gflops(DTYPES[precision])
            rate, flops = synthesis_rate(channels, size, images, steps, 128, args.repeats, precision)
            print(f"| synthesis, ResNet18, {label} | 128 | {precision} | {rate:,.0f} image-steps/s | "
                  f"{rate * flops / 1e9:,.0f} | {rate * flops / 1e9 / limit:.0%} of {limit:,.0f} |")
    seconds = metric_seconds(100, 512, args.repeats)
    print(f"| cosine + zscore, n = 100, 512 features, 1 unit | - | fp32 | {seconds:.2f} s | - | - |")


if __name__ == "__main__":
    main()
