"""Training throughput of a model: the bare forward + backward + SGD step, against the GEMM limit.

    python benchmarks/train_step.py [--model resnet18] [--threads 2] [--batch 128] [--size 32]
                                    [--channels 3] [--precision fp32,bf16] [--device cpu]
                                    [--layout channels_last,contiguous] [--taps live,all]

Random images and labels, the toolkit's model factory (ResNet18 with the CIFAR stem at 32x32),
in each ``--layout`` (the trainer runs channels-last), its convolutions computing only the kernel
taps that read pixels (``--taps live``, what the trainer runs: ``toolkit.model.skip_padding_taps``)
or every tap (``all``, the model as its plugin builds it), under bf16 autocast as the trainer runs
``--precision bf16``; 3 warm-up steps, then the best of 3 timings of 5 steps. Each rate is also
given in GFLOP/s (the step's FLOPs counted by ``torch.utils.flop_counter``: with ``live`` taps,
those the step computes) as a fraction of the same precision's GEMM limit, measured right before
it. The rate bounds what ``analyze`` can train per second here.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from toolkit.model import skip_padding_taps
from toolkit.plugins import get_registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import DTYPES, best_time, gemm_gflops, machine  # noqa: E402 (the benchmarks' shared helpers)


LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def train_rate(model: str = "resnet18", batch: int = 128, size: int = 32, classes: int = 10,
               precision: str = "fp32", device: str = "cpu", channels: int = 3,
               layout: torch.memory_format = torch.channels_last,
               live_taps: bool = True) -> tuple[float, float]:
    """(images per second, FLOPs per image) of ``model``'s training step on ``device``."""
    torch.manual_seed(0)
    net = get_registry("model").get(model).obj(classes, channels, size)
    if live_taps:
        skip_padding_taps(net)
    net = net.to(device, memory_format=layout).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    images = torch.rand(batch, channels, size, size, device=device).contiguous(memory_format=layout)
    labels = torch.randint(0, classes, (batch,), device=device)
    autocast = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
                if precision == "bf16" else contextlib.nullcontext())
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops() / batch
    for _ in range(3):
        step()
    sync()

    def five() -> None:
        for _ in range(5):
            step()
        sync()

    return 5 * batch / best_time(five, 3), flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 or both: fp32,bf16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layout", default="channels_last",
                        help="channels_last, contiguous or both: channels_last,contiguous")
    parser.add_argument("--taps", default="live",
                        help="live (skip the taps that read only padding), all, or both: live,all")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    for precision in args.precision.split(","):
        limit = gemm_gflops(DTYPES[precision], device=args.device)
        for layout, taps in itertools.product(args.layout.split(","), args.taps.split(",")):
            rate, flops = train_rate(args.model, args.batch, args.size, args.classes, precision,
                                     args.device, args.channels, LAYOUTS[layout], taps == "live")
            print(f"{args.model} {args.size}x{args.size}x{args.channels}, batch {args.batch}, "
                  f"{precision}, {layout}, {taps} taps, {args.device}, {args.threads} thread(s): "
                  f"{rate:.1f} images/s, {rate * flops / 1e9:,.1f} GFLOP/s = {rate * flops / 1e9 / limit:.0%} "
                  f"of the {precision} GEMM limit measured just before it ({limit:,.1f} GFLOP/s; "
                  f"{flops / 1e6:,.0f} MFLOP per image)")


if __name__ == "__main__":
    main()
