"""How close synthesis runs to this machine's limits, and what the active-set queue buys.

    python benchmarks/grid.py [--out benchmarks/results-cpu.md] [--big]

One run measures, on the same models (ResNet18 with the CIFAR stem, ``toolkit``'s ``resnet18``):

1. the machine's GEMM limit (fp32 and bf16, the best of three 1024-wide products:
   ``gemm_gflops``), the FLOPs of one input-gradient image-step (counted by
   ``torch.utils.flop_counter`` over the forward and the backward to the input), and the
   image-steps per second of the ``prototype`` synthesizer at 32x32x3 (random weights) and 8x8x1
   (digits), fp32 and bf16, as a fraction of that limit;
2. a full prototype grid of one interval (n = 10 digits classes, ``--seeds`` seeds sharing one
   queue as in ``toolkit analyze``, a ResNet18 trained briefly on digits) with the work queue in
   fp32 and bf16, against (a) the straightforward implementation, one image at a time until
   CE < 0.01, and (b) the authors' style, batches of n images for a fixed 250 steps, both fp32.
   (a) and (b) are timed on a sample (the first images of the grid; a few steps of one batch) and
   scaled to the whole grid: (a) by the grid's own step counts, (b) by (n + 1) x 250 batch-steps
   per seed;
3. wasted image-steps: of all model rows computed, those that moved an image (its steps), those
   that tested an image and found it done (one per image: the forward is the stopping test every
   method needs, the backward comes with the batch and is dropped) and empty slots at the queue's
   tail;
4. peak resident memory of one CIFAR-sized grid unit (32x32x3, random weights, synthesis with
   ``fixed_steps=1``, features and metrics), in a fresh subprocess each: n = 10, and with ``--big``
   n = 100 (10,100 images; minutes on a 2-core CPU);
5. C and R means of the digits grid under bf16 against fp32 (max absolute difference);
6. training throughput against the model's own forward + backward + SGD step on the same batch, and
   the time of the metrics for one n = 100 unit against the synthesis of that unit.

7. with ``--compile``, the same image-steps per second under ``torch.compile`` (fp32, 32x32).

It prints a Markdown table and writes it to ``--out``. Absolute numbers depend on the load of the
machine (recorded with the numbers), so each rate's GEMM limit is measured again right before it
and its fraction is taken of that neighbouring limit. ``--threads`` sets torch's thread count (pin
the process, e.g. ``taskset -c 0``, to measure one core while other work runs on the others).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import toolkit
from toolkit.hardware import cpu_model
from toolkit.model import NormalizedClassifier, extract_features, frozen, skip_padding_taps, step_flops
from toolkit.stages.synthesize import synthesize_grid
from toolkit.plugins import get_registry
from toolkit.results import build_dataset
from toolkit.synthesis import auto_batch_size
from toolkit.training import TrainingSettings, augment, to_pixels, train_through_intervals
from toolkit_plugins import synthesis as synthesis_plugin
from toolkit_plugins.metrics import cosine, zscore

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRECISIONS = tuple(DTYPES)


def resnet18(num_classes: int, channels: int, size: int, mean=None, std=None) -> NormalizedClassifier:
    """ResNet18 as ``analyze`` builds it (skipping the taps that read only padding), channels-last."""
    net = skip_padding_taps(get_registry("model").get("resnet18").obj(num_classes, channels, size))
    model = NormalizedClassifier(net, mean or [0.5] * channels, std or [0.25] * channels)
    return model.to(memory_format=torch.channels_last)


@contextlib.contextmanager
def empty_inductor_cache() -> Iterator[None]:
    """Compile from an empty inductor cache, as a user's first run does: inductor reads the
    variable whenever it compiles, and dynamo forgets what it compiled before. Without it, a second
    compile in one process (another precision, size or model) reuses the first one's kernels."""
    saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder = tempfile.mkdtemp(prefix="inductor-cold-")
    torch._dynamo.reset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TORCHINDUCTOR_CACHE_DIR"]
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved
        shutil.rmtree(folder, ignore_errors=True)


def best_time(work, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - began)
    return best


def _channels_last(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype).contiguous(memory_format=torch.channels_last)


def gemm_gflops(dtype: torch.dtype, size: int | None = None, seconds: float = 1.0,
                device: str | torch.device = "cpu") -> float:
    """The GEMM rate of ``device`` in ``dtype`` (size x size, default 1024 on a CPU and 8192 on a
    GPU, whose cores a small product leaves idle); TF32 stays off, so fp32 means fp32.

    On a CPU it is the best of three products that take different code paths: ``torch.matmul``
    (MKL), the same product as a 1x1 convolution, and a 3x3 convolution without padding (both
    oneDNN, as the models' convolutions are; without padding every multiply is counted and
    done). On an AMD Zen 5 EPYC fp32 matmul ran at 183-206 GFLOP/s where the 1x1 convolution ran
    at 309-423; on a Zen 4 EPYC both ran at about 190 where the 3x3 one ran at 211-224, and a
    ResNet18 training step at 215."""
    cuda = torch.device(device).type == "cuda"
    size = size or (8192 if cuda else 1024)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    products = [(lambda: a @ b, 2 * size ** 3)]  # (one product, its FLOPs)
    if not cuda:
        side = int(size ** 0.5)  # side x side channels-last images: ``size`` channels, 1x1 filters
        image = _channels_last(1, size, side, side, dtype=dtype)
        filters = _channels_last(size, size, 1, 1, dtype=dtype)
        products.append((lambda: F.conv2d(image, filters), 2 * size * size * side ** 2))
        wide = max(1, size // 4)  # ``wide`` channels, 3x3 filters, a side x side output
        padded = _channels_last(1, wide, side + 2, side + 2, dtype=dtype)
        taps = _channels_last(wide, wide, 3, 3, dtype=dtype)
        products.append((lambda: F.conv2d(padded, taps), 2 * wide * wide * 9 * side ** 2))
    best = 0.0
    for product, flops in products:
        def calls(count: int) -> None:
            for _ in range(count):
                product()
            sync()

        calls(1)
        count = max(1, int(seconds / best_time(lambda: calls(1), 1)))
        best = max(best, flops * count / best_time(lambda: calls(count), 3) / 1e9)
    return best


def gemm_limits(device: str | torch.device = "cpu") -> dict[str, float]:
    """The GEMM limit of each precision of ``DTYPES`` on ``device``, GFLOP/s."""
    return {p: gemm_gflops(dtype, device=device) for p, dtype in DTYPES.items()}


_ROWS = [0]  # image rows run through a RowCounter, all counters together


@torch.fx.wrap  # kept as one call in a torch.fx trace, so the synthesizer can still fold the model
def _count_rows(x: torch.Tensor) -> torch.Tensor:
    _ROWS[0] += x.shape[0]
    return x


class RowCounter(nn.Module):
    """Counts the image rows the model is run on (to measure wasted work)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self._base = model, _ROWS[0]

    @property
    def rows(self) -> int:
        return _ROWS[0] - self._base

    def forward(self, x):
        return self.model(_count_rows(x))


def synthesis_rate(model, channels: int, size: int, steps: int, precision: str,
                   compile: bool = False, fold: bool = True, device: str = "cpu",
                   repeats: int = 1, batch: int | None = None) -> tuple[float, int, float]:
    """(image-steps per second, batch size, seconds of the warm-up call, which compiles) of the
    ``prototype`` synthesizer on ``model``, which lies on ``device``, at ``batch`` (default: the
    device's own)."""
    synthesis_plugin.FOLD_BATCHNORM = fold
    batch = batch or auto_batch_size(device, (channels, size, size))
    synth = get_registry("synthesizer").get("prototype").obj
    start = torch.rand(batch, channels, size, size, device=device)
    targets = torch.arange(batch, device=device) % 10
    settings = toolkit.SynthesisSettings(fixed_steps=steps, batch_size=batch, precision=precision,
                                         compile=compile)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def run(settings) -> None:
        synth(model, start, targets, settings)
        sync()

    with frozen(model):
        warm_up = best_time(lambda: run(dataclasses.replace(settings, fixed_steps=1)), 1)
        seconds = best_time(lambda: run(settings), repeats)
    synthesis_plugin.FOLD_BATCHNORM = True
    # steps + 1 model runs per image (the last: its test)
    return batch * (steps + 1) / seconds, batch, warm_up


# --- the two baselines of the grid comparison, written the plain way ---------------------------

def one_at_a_time(model, start: torch.Tensor, targets: torch.Tensor, lr: float, threshold: float,
                  max_steps: int) -> int:
    """Each image alone, stepped until CE < threshold; returns the model runs made."""
    runs = 0
    for x, target in zip(start, targets):
        x = x[None].clone()
        for t in range(max_steps + 1):
            x.requires_grad_(True)
            loss = F.cross_entropy(model(x), target[None])
            runs += 1
            if loss.item() < threshold or t == max_steps:
                break
            (grad,) = torch.autograd.grad(loss, x)
            x = (x.detach() - lr * grad / grad.norm().clamp_min(1e-12)).clamp(0, 1)
    return runs


def fixed_batch(model, start: torch.Tensor, targets: torch.Tensor, lr: float, steps: int) -> None:
    """The authors' loop: one batch, a fixed number of steps, no stopping test."""
    x = start.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = F.cross_entropy(model(x), targets, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), x)
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        x = (x.detach() - lr * grad / norm).clamp(0, 1)


def grid_comparison(args, rows: list, notes: list) -> None:
    data = get_registry("dataset").get("digits").obj(Path("."), False)
    n = data.num_classes
    torch.manual_seed(0)
    model = resnet18(n, data.in_chans, data.image_size, data.mean, data.std)
    train = TrainingSettings(epochs=args.train_epochs, lr=0.1, batch_size=32)
    loop = _LoopTimer()
    stage = list(train_through_intervals(model, data, [1.0], "data", train, 0, "cpu",
                                         progress=loop))[-1]
    train_seconds = loop.seconds
    notes.append(f"digits model: ResNet18 trained {args.train_epochs} epoch(s) on digits "
                 f"(test accuracy {stage.test_accuracy:.3f}); the same weights for every grid row.")

    # Training throughput against the model's own forward + backward + SGD step, batch 32.
    per_epoch = len(data.train_labels) // train.batch_size
    train_rate = per_epoch * train.batch_size * args.train_epochs / train_seconds
    images = to_pixels(data.train_images[:train.batch_size], "cpu")
    labels = data.train_labels[:train.batch_size]
    # on a copy: its steps move weights and BatchNorm statistics, and the grid rows below use the
    # trained model's
    stepped = copy.deepcopy(model).train()
    optimizer = train.optimizer(stepped.parameters())

    def bare_step():
        out = stepped(augment(images, 0, False, torch.Generator()))
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(out, labels).backward()
        optimizer.step()

    bare_rate = train.batch_size * 20 / best_time(lambda: [bare_step() for _ in range(20)], 2)
    del stepped, optimizer
    model.eval()
    rows.append(("training loop, digits 8x8, batch 32 (sampling, augmentation, lr schedule, "
                 "fwd+bwd+SGD)", f"{train_rate:,.0f} img/s", f"{train_rate / bare_rate:.0%} of "
                 f"the bare fwd+bwd+SGD step on one batch ({bare_rate:,.0f} img/s)"))

    lr, threshold, max_steps = 0.1, 0.01, 100
    # One interval's grids: all seeds share the queue, as in `toolkit analyze`.
    noise = torch.rand(args.seeds, n, data.in_chans, data.image_size, data.image_size,
                       generator=torch.Generator().manual_seed(0))
    synthesizer = get_registry("synthesizer").get("prototype")
    batch = auto_batch_size("cpu", noise.shape[2:])
    grids = {}
    for precision in PRECISIONS:
        counter = RowCounter(model)
        settings = toolkit.SynthesisSettings(lr=lr, loss_threshold=threshold, max_steps=max_steps,
                                             batch_size=batch, precision=precision)
        with frozen(model):
            began = time.perf_counter()
            grid, records = synthesize_grid(counter, synthesizer, n, noise, settings)
            seconds = time.perf_counter() - began
            feats = extract_features(model, grid.flatten(0, 2)).view(args.seeds, n, n, -1)
        grids[precision] = (seconds, records, feats, counter.rows)
        if precision == "fp32":
            prototypes = grid[0].diagonal().permute(3, 0, 1, 2)   # seed 0's p_c = P[c, c]: (n, C, H, W)

    seconds32, records, _, computed = grids["fp32"]
    steps = records["steps"]
    total_runs = int((steps + 1).sum())
    # (a): a sample of the grid's second-phase starts (the fp32 prototypes), one at a time.
    sample = min(args.sample, n * (n - 1))
    with frozen(model):
        k, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        off = k != j
        starts, targets = prototypes[j[off]][:sample], k[off][:sample]
        began = time.perf_counter()
        runs = one_at_a_time(model, starts, targets, lr, threshold, max_steps)
        per_run = (time.perf_counter() - began) / runs
        a_seconds = per_run * total_runs
        # (b): one batch of n images, a few fixed steps, scaled to (n + 1) batches x 250 steps.
        b_steps = args.fixed_sample_steps
        b_seconds = best_time(lambda: fixed_batch(model, prototypes, torch.arange(n), lr, b_steps),
                              1) / b_steps * (n + 1) * 250 * args.seeds
    mean_steps = float(steps.float().mean())
    b_wasted = 1 - float(steps.clamp(max=250).sum()) / (steps.numel() * 250)
    for precision in PRECISIONS:
        seconds, rec, _, rows_run = grids[precision]
        useful, tests = int(rec["steps"].sum()), rec["steps"].numel()
        rows.append((f"full grid n={n} x {args.seeds} seeds (one interval), digits 8x8, work queue, "
                     f"{precision} (batch {batch})",
                     f"{seconds:.1f} s",
                     f"{a_seconds / seconds:.1f}x faster than (a); {useful:,} steps, mean "
                     f"{float(rec['steps'].float().mean()):.1f}/image"))
        rows.append((f"model rows of that grid, {precision}", f"{rows_run:,}",
                     f"steps {useful / rows_run:.1%}; final stopping tests (one per image) "
                     f"{tests / rows_run:.1%}; empty slots {(rows_run - useful - tests) / rows_run:.1%}"))
    rows.append((f"(a) one image at a time until CE < {threshold}, fp32",
                 f"{a_seconds:.1f} s (est.)",
                 f"timed {runs} model runs of {sample} images ({per_run * 1e3:.1f} ms each), "
                 f"x {total_runs:,} runs of the grid"))
    rows.append((f"(b) authors: batches of n={n}, fixed 250 steps, fp32", f"{b_seconds:.1f} s (est.)",
                 f"timed {b_steps} steps of one batch, x {(n + 1) * 250 * args.seeds} batch-steps; "
                 f"{b_wasted:.0%} of its steps move converged images (queue needs "
                 f"{mean_steps:.1f} steps/image)"))

    means = {}
    for precision in PRECISIONS:
        _, rec, feats, _ = grids[precision]
        ds = build_dataset(intervals=[1.0], seeds=list(range(args.seeds)), class_names=data.class_names,
                           features=feats[None].numpy(),
                           records={name: v[None].numpy() for name, v in rec.items()},
                           test_accuracy=[stage.test_accuracy], train_size=[stage.train_size])
        ds = ds.assign(cosine(ds))
        ds = ds.assign(zscore(ds))
        means[precision] = (float(ds.C_mean[0]), float(ds.R_mean[0]))
    diff = max(abs(a - b) for a, b in zip(means["fp32"], means["bf16"]))
    rows.append(("C/R means, bf16 vs fp32 (digits grid)", f"max abs diff {diff:.4f}",
                 f"fp32 C {means['fp32'][0]:.4f} R {means['fp32'][1]:.4f}; "
                 f"bf16 C {means['bf16'][0]:.4f} R {means['bf16'][1]:.4f}"))


class _LoopTimer:
    """A progress callback that times the training loop (from opening its bar to closing it),
    leaving out the BatchNorm recompute and test accuracy that follow each stage."""

    def __init__(self):
        self.seconds = 0.0

    def __call__(self, *_, **__):
        began = time.perf_counter()
        timer = self

        class Bar:
            def update(self, *_):
                pass

            def close(self):
                timer.seconds += time.perf_counter() - began

        return Bar()


def peak_rss_of_unit(n: int, batch: int) -> float:
    """Peak resident memory (GiB) of one CIFAR-sized unit, measured in a fresh interpreter."""
    code = f"""
import resource, sys, torch, numpy as np, toolkit
torch.set_num_threads({torch.get_num_threads()})
sys.path.insert(0, {str(Path(__file__).parent)!r})
from grid import resnet18
from toolkit.model import extract_features, frozen
from toolkit.stages.synthesize import synthesize_grid
from toolkit.plugins import get_registry
from toolkit.results import build_dataset
from toolkit_plugins.metrics import cosine, zscore
n = {n}
model = resnet18(n, 3, 32)
noise = torch.rand(1, n, 3, 32, 32)
settings = toolkit.SynthesisSettings(fixed_steps=1, batch_size={batch})
with frozen(model):
    grid, records = synthesize_grid(model, get_registry("synthesizer").get("prototype"), n, noise, settings)
    feats = extract_features(model, grid.flatten(0, 2)).view(1, 1, n, n, -1)
ds = build_dataset(intervals=[1.0], seeds=[0], class_names=[str(c) for c in range(n)],
                   features=feats.numpy(), records={{k: v[None].numpy() for k, v in records.items()}},
                   test_accuracy=[0.0], train_size=[0])
ds = ds.assign(cosine(ds)); ds = ds.assign(zscore(ds))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1]) / 2 ** 20  # ru_maxrss is in KiB on Linux


def metric_seconds(n: int = 100, features: int = 512) -> float:
    from toolkit.results import dataset_from_features

    ds = dataset_from_features(np.random.default_rng(0).random((1, 1, n, n, features), dtype=np.float32))
    return best_time(lambda: zscore(ds.assign(cosine(ds))), 2)


def machine() -> str:
    load = os.getloadavg()
    return (f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch "
            f"{torch.__version__}; load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results-cpu.md"),
                        help="Markdown file to write the table to")
    parser.add_argument("--big", action="store_true", help="also measure peak memory at n = 100")
    parser.add_argument("--steps", type=int, default=2, help="fixed steps per rate measurement")
    parser.add_argument("--sample", type=int, default=6, help="images timed one at a time for (a)")
    parser.add_argument("--fixed_sample_steps", type=int, default=10, help="steps timed for (b)")
    parser.add_argument("--train_epochs", type=int, default=2, help="epochs of the digits model")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the digits grid (one queue)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--compile", action="store_true",
                        help="also measure fp32 synthesis under torch.compile (compiles for minutes)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    header = machine()
    print(header, flush=True)
    rows: list[tuple[str, str, str]] = []
    notes: list[str] = []

    limits = gemm_limits()
    for p in PRECISIONS:
        rows.append((f"GEMM limit {p} (gemm_gflops), at the start", f"{limits[p]:,.2f} GFLOP/s", ""))
    for label, channels, size in (("32x32x3, random weights", 3, 32), ("8x8x1, random weights", 1, 8)):
        model = resnet18(10, channels, size)
        flops = step_flops(model, (channels, size, size))
        rows.append((f"FLOPs of one input-gradient image-step, {label}", f"{flops / 1e6:,.1f} MFLOP",
                     "FlopCounterMode: forward + backward to the input"))
        runs = [("fp32", False, False)] + [(p, False, True) for p in PRECISIONS]
        runs += [("fp32", True, True)] if args.compile and size == 32 else []
        for p, compile, fold in runs:
            limit = gemm_gflops(DTYPES[p])  # right beside it
            rate, batch, warm_up = synthesis_rate(model, channels, size, args.steps, p, compile, fold)
            if size == 32 and p == "fp32" and fold and not compile:
                per_unit = 100 * 100 / rate  # a lower bound: one step per image, fp32
            how = ", ".join([p] + (["torch.compile"] if compile else [])
                            + ([] if fold else ["BatchNorm not folded (before)"]))
            rows.append((f"synthesis {how}, {label} (batch {batch})", f"{rate:,.1f} image-steps/s",
                         f"{rate * flops / 1e9:,.1f} GFLOP/s = {rate * flops / 1e9 / limit:.0%} "
                         f"of the {p} GEMM limit measured just before it ({limit:,.2f} GFLOP/s)"
                         + (f"; first call (compiling) {warm_up:.0f} s" if compile else "")))
            print(rows[-1], flush=True)
    grid_comparison(args, rows, notes)
    print(rows[-1], flush=True)

    auto32 = auto_batch_size("cpu", (3, 32, 32))
    for n in (10, 100) if args.big else (10,):
        rss = peak_rss_of_unit(n, auto32)
        rows.append((f"peak resident memory, one unit n={n}, 32x32x3 (batch {auto32})",
                     f"{rss:.2f} GiB", "fresh subprocess; synthesis (fixed_steps=1), features, metrics"))
    if not args.big:
        rows.append(("peak resident memory, one unit n=100, 32x32x3", "not measured", "pass --big"))
    seconds = metric_seconds()
    rows.append(("metrics (cosine + zscore), one unit n=100, 512 features", f"{seconds:.2f} s",
                 f"{seconds / per_unit:.2%} of that unit's synthesis at one step per image in fp32 "
                 f"({per_unit:,.0f} s), a lower bound on it"))
    for p, end in gemm_limits().items():
        rows.append((f"GEMM limit {p} (gemm_gflops), at the end", f"{end:,.2f} GFLOP/s", ""))
    rows.append(("GPU", "not measured", "no GPU in this run" if not torch.cuda.is_available() else
                 "run this script with CUDA to fill it in"))

    table = "\n".join(["| measurement | result | detail |", "|---|---|---|"]
                      + [f"| {a} | {b} | {c} |" for a, b, c in rows])
    load = os.getloadavg()
    text = (f"Machine: {header}; load average at end {load[0]:.1f}.\n"
            f"Command: `python benchmarks/grid.py {' '.join(sys.argv[1:])}` "
            f"({time.perf_counter() - began:.0f} s).\n\n{table}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
