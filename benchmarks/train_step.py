"""Training throughput of a model at CIFAR's size: the bare forward + backward + SGD step.

    python benchmarks/train_step.py [--model resnet18] [--threads 2] [--batch 128] [--size 32]

Random images and labels, the toolkit's model factory (ResNet18 with the CIFAR stem at 32x32),
channels-last as the trainer runs it; 3 warm-up steps, then the best of 3 timings of 5 steps.
The rate bounds what ``analyze`` can train per second on this machine.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from toolkit.plugins import get_registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = get_registry("model").get(args.model).obj(args.classes, 3, args.size)
    net = net.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    images = torch.rand(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, args.classes, (args.batch,))

    def step() -> None:
        loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(5):
            step()
        best = min(best, time.perf_counter() - start)
    print(f"{args.model} {args.size}x{args.size}, batch {args.batch}, {args.threads} thread(s): "
          f"{5 * args.batch / best:.1f} images/s")


if __name__ == "__main__":
    main()
