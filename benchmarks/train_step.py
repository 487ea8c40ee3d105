"""Training throughput of a model: the bare forward + backward + SGD step, against the GEMM limit.

    python benchmarks/train_step.py [--model resnet18] [--threads 2] [--batch 128] [--size 32]
                                    [--channels 3] [--precision fp32,bf16] [--device cpu]
                                    [--layout channels_last,contiguous] [--taps live,all]
                                    [--compile no,yes] [--sgd toolkit,torch]

Random images and labels, the toolkit's model factory (ResNet18 with the CIFAR stem at 32x32) and
the trainer's own optimizer (``toolkit.training.TrainingSettings.optimizer``: SGD with Nesterov
momentum and weight decay, its update computed in the gradients' memory; ``--sgd torch``: torch's
own SGD with the same settings, the same bits), in each ``--layout`` (the trainer runs
channels-last), its convolutions computing only the kernel taps that read pixels (``--taps live``,
what the trainer runs: ``toolkit.model.skip_padding_taps``) or every tap (``all``, the model as its
plugin builds it), under bf16 autocast as the trainer runs ``--precision bf16``, eager (``--compile
no``, as the trainer runs) or through ``torch.compile`` (``yes``: each configuration compiles from
an empty cache in its first step, timed apart); 3 warm-up steps, then the best of 3 timings of 5
steps. Each rate is also given in GFLOP/s (the forward and backward FLOPs counted by
``torch.utils.flop_counter``: with ``live`` taps, those the step computes) as a fraction of the same
precision's GEMM limit, measured right before it, with the share of the optimizer's update in the
step and the bound it sets: the fraction the step would reach if its forward and backward ran at the
limit and the update took the time it took. This script sets glibc's malloc as ``python -m toolkit``
does (``toolkit.hardware.keep_memory_mapped``). The rate bounds what ``analyze`` can train per
second here.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from toolkit.hardware import keep_memory_mapped
from toolkit.model import skip_padding_taps
from toolkit.plugins import get_registry
from toolkit.training import TrainingSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import DTYPES, empty_inductor_cache, gemm_gflops, machine  # noqa: E402 (the benchmarks' shared helpers)


LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


class TrainRate(NamedTuple):
    """One configuration's training step, as :func:`train_rate` measured it."""

    images_per_second: float
    flops: float  # per image: the forward and backward pass (the update's are not counted)
    update_share: float  # of the step's time, the optimizer's update
    first_step: float  # seconds of the first timed step (compiling included, when compiled)


def train_rate(model: str = "resnet18", batch: int = 128, size: int = 32, classes: int = 10,
               precision: str = "fp32", device: str = "cpu", channels: int = 3,
               layout: torch.memory_format = torch.channels_last,
               live_taps: bool = True, compiled: bool = False, sgd: str = "toolkit") -> TrainRate:
    """The training step of ``model`` on ``device``: its rate, FLOPs and the update's share."""
    torch.manual_seed(0)
    net = get_registry("model").get(model).obj(classes, channels, size)
    if live_taps:
        skip_padding_taps(net)
    net = net.to(device, memory_format=layout).train()
    optimizer = TrainingSettings(epochs=1, precision=precision).optimizer(net.parameters())
    if sgd == "torch":  # the same settings, torch's own step
        optimizer = torch.optim.SGD(net.parameters(), **optimizer.defaults)
    images = torch.rand(batch, channels, size, size, device=device).contiguous(memory_format=layout)
    labels = torch.randint(0, classes, (batch,), device=device)
    autocast = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
                if precision == "bf16" else contextlib.nullcontext())
    cuda = torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    forward = net

    def step() -> Callable[[], float]:
        """One step; a function that gives the seconds of its update once the device is synced."""
        with autocast:
            loss = F.cross_entropy(forward(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cuda:  # events, not syncs: the steps queue up on the GPU as they do in training
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            optimizer.step()
            end.record()
            return lambda: start.elapsed_time(end) / 1000
        began = time.perf_counter()
        optimizer.step()
        seconds = time.perf_counter() - began
        return lambda: seconds

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops() / batch
    with empty_inductor_cache() if compiled else contextlib.nullcontext():
        if compiled:
            forward = torch.compile(net)
        sync()
        began = time.perf_counter()
        step()
        sync()
        first = time.perf_counter() - began
        for _ in range(3):
            step()
        sync()
        timings = []  # (seconds of 5 steps, of which their updates)
        for _ in range(3):
            began = time.perf_counter()
            updates = [step() for _ in range(5)]
            sync()
            timings.append((time.perf_counter() - began, sum(update() for update in updates)))
    seconds, update = min(timings)
    return TrainRate(5 * batch / seconds, flops, update / seconds, first)


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
    parser.add_argument("--compile", default="no",
                        help="no (eager, as the trainer runs), yes (torch.compile), or both: no,yes")
    parser.add_argument("--sgd", default="toolkit",
                        help="toolkit (the trainer's, in place), torch (torch.optim.SGD), or both")
    args = parser.parse_args()
    if set(args.compile.split(",")) - {"no", "yes"}:
        parser.error(f"--compile takes no, yes or no,yes, not {args.compile!r}")
    if set(args.sgd.split(",")) - {"toolkit", "torch"}:
        parser.error(f"--sgd takes toolkit, torch or toolkit,torch, not {args.sgd!r}")
    torch.set_num_threads(args.threads)
    keep_memory_mapped()  # glibc's malloc set as `python -m toolkit` sets it for the trainer
    print(machine())
    for precision in args.precision.split(","):
        limit = gemm_gflops(DTYPES[precision], device=args.device)
        for layout, taps, compiled, sgd in itertools.product(
                args.layout.split(","), args.taps.split(","), args.compile.split(","),
                args.sgd.split(",")):
            got = train_rate(args.model, args.batch, args.size, args.classes, precision, args.device,
                             args.channels, LAYOUTS[layout], taps == "live", compiled == "yes", sgd)
            gflops = got.images_per_second * got.flops / 1e9
            # seconds per image: at the limit, and at the limit plus the update as it ran
            at_limit = got.flops / (limit * 1e9)
            bound = at_limit + got.update_share / got.images_per_second
            print(f"{args.model} {args.size}x{args.size}x{args.channels}, batch {args.batch}, "
                  f"{precision}, {layout}, {taps} taps, "
                  f"{'compiled' if compiled == 'yes' else 'eager'}, {sgd}'s SGD, {args.device}, "
                  f"{args.threads} thread(s): {got.images_per_second:.1f} images/s, {gflops:,.1f} "
                  f"GFLOP/s = {gflops / limit:.0%} of the {precision} GEMM limit measured just "
                  f"before it ({limit:,.1f} GFLOP/s; {got.flops / 1e6:,.0f} MFLOP per image); the "
                  f"update {got.update_share:.0%} of the step, which bounds the step at "
                  f"{at_limit / bound:.0%} of the limit"
                  + (f"; first step, compiling from an empty cache, {got.first_step:.1f} s"
                     if compiled == "yes" else ""))


if __name__ == "__main__":
    main()
