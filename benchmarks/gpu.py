"""Everything a GPU machine should show, in one go: its tests, a short study, its rates.

    python benchmarks/gpu.py [--out benchmarks/results-gpu.md] [--archive cifar10-jpeg.zip]
                             [--skip_tests] [--device cuda] [--rehearse]

(``benchmarks/gpu.sh`` is the same, for a shell.) On a CUDA machine it

1. runs the test suite's CUDA-marked tests (``pytest -m cuda``: pinned memory, bf16 autocast under
   ``--precision auto``, the GPU's micro-batch size, device checks, NCCL where there are 2 GPUs);
2. measures the GPU's own GEMM limits (8192 x 8192 matmul, fp32 with TF32 off, and bf16);
3. times the ``prototype`` synthesizer (ResNet18, CIFAR-sized 3x32x32 images, random weights, the
   GPU's automatic micro-batch) and the training step (forward, backward, the trainer's SGD) in
   fp32 and bf16, each in GFLOP/s as a fraction of the same precision's limit;
4. times the same synthesis compiled against eager in 10 alternating rounds
   (``benchmarks/compile.py``: the speed-ups and their 95 % lower bound, one compile's time, the
   eager GFLOP/s), toward a CUDA row of
   ``toolkit.hardware.COMPILE_MEASURED``, which also needs what a whole study pays compiling;
5. runs a short CIFAR-sized study end to end with ``--precision auto`` (the CIFAR-10 archive with
   ``--archive``, else a made-up 10-class 3x32x32 dataset that needs no file) and prints its
   summary and speed line;
6. times the training step compiled against eager (``benchmarks/train_step.py``; the trainer runs
   eagerly, since compiling its step did not pay on the CPUs measured).

It writes a Markdown report to ``--out``, rewritten after each step, so that a run cut short (a
GPU's minutes are few) keeps what it measured. Without CUDA it says so and exits 1. ``--rehearse``
runs every step on the CPU at toy sizes (8x8 images, tiny batches, 3 rounds; the numbers mean
nothing), so that a broken step shows up here, and in the slow tests, before scarce GPU time is
spent on it.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

import toolkit
from toolkit.hardware import keep_memory_mapped
from toolkit.model import step_flops
from toolkit.plugins import get_plugin_manager

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import DTYPES, gemm_gflops, machine, resnet18, synthesis_rate  # noqa: E402
from compile import SPEEDUP_HEADER, rates, speedup_cells  # noqa: E402 (empties inductor's cache)
from precision import report as write_report  # noqa: E402
from train_step import train_rate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Scale(NamedTuple):
    """How big each measurement is: the real one on a GPU, or a toy one to rehearse on a CPU."""

    size: int  # image side (3 channels)
    gemm: int | None  # GEMM side (None: gemm_gflops' default for the device)
    gemm_seconds: float  # how long each GEMM timing runs
    synthesis_batch: int | None  # None: the device's own
    synthesis_steps: int
    train_batch: int
    rounds: int  # alternating eager and compiled timings
    per_class: tuple[int, int]  # the made-up dataset's training and test images per class
    study: dict[str, Any]  # analyze options of the short study


FULL = Scale(32, None, 1.0, None, 20, 512, 10, (500, 100),  # 10 rounds: compile.py's default
             dict(intervals=(0.5, 1.0), seeds=2, epochs=2, max_steps=100))
REHEARSAL = Scale(8, 128, 0.05, 16, 2, 8, 3, (8, 4),  # 16: the compiled graph's smallest batch
                  dict(intervals=(1.0,), seeds=1, epochs=1, max_steps=3))


def gpu_synthesis_rate(device: str, precision: str, scale: Scale) -> tuple[float, int, float]:
    """(image-steps per second, micro-batch, FLOPs per image-step) of ``prototype`` at 3 x size^2."""
    model = resnet18(10, 3, scale.size)
    flops = step_flops(model, (3, scale.size, scale.size))
    rate, batch, _ = synthesis_rate(model.to(device), 3, scale.size, scale.synthesis_steps, precision,
                                    device=device, repeats=2, batch=scale.synthesis_batch)
    return rate, batch, flops


class MadeUpCifar:
    """A CIFAR-shaped dataset that needs no file: 10 classes, each a colour and a stripe, plus noise."""

    __name__ = "gpu-benchmark-data"

    def __init__(self, size: int = 32, per_class: tuple[int, int] = (500, 100)):
        self.size, self.per_class = size, per_class

    @toolkit.hookimpl
    def register_datasets(self, register):
        register("made-up-cifar", self.load,
                 description=f"10 classes of 3x{self.size}x{self.size} stripes (benchmark)")

    def load(self, root, download) -> toolkit.ImageDataset:
        g = torch.Generator().manual_seed(0)
        side, stripe = self.size, max(1, self.size // 10)

        def split(per_class):
            labels = torch.arange(10).repeat_interleave(per_class)
            images = torch.rand(len(labels), 3, side, side, generator=g) * 0.5
            for index, label in enumerate(labels.tolist()):
                row = label * side // 10
                images[index, label % 3, row:row + stripe, :] += 0.5
            return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels

        train_x, train_y = split(self.per_class[0])
        test_x, test_y = split(self.per_class[1])
        return toolkit.ImageDataset("made-up-cifar", train_x, train_y, test_x, test_y,
                                    class_names=[f"stripe{c}" for c in range(10)])


def study(device: str, archive: Path | None, folder: Path, scale: Scale) -> str:
    options = dict(model="resnet18", device=device, precision="auto", progress=False, plots=False,
                   **scale.study)
    if archive:
        options.update(dataset="imagefolder", data_root=str(archive))
    else:
        get_plugin_manager().register(MadeUpCifar(scale.size, scale.per_class),
                                      name="gpu-benchmark-data")
        options.update(dataset="made-up-cifar")
    began = time.perf_counter()
    ds = toolkit.analyze(out=folder / "study.nc", **options)
    return (f"{toolkit.summary(ds)}\nwall {time.perf_counter() - began:.0f} s; precision "
            f"{ds.attrs['precision']} ({ds.attrs.get('precision_reason', 'asked for')})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-gpu.md")
    parser.add_argument("--archive", type=Path, default=None, help="CIFAR-10 zip, ImageFolder layout")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--skip_tests", action="store_true")
    parser.add_argument("--rehearse", action="store_true",
                        help="every step on the CPU at toy sizes, to check the script itself")
    args = parser.parse_args()
    scale = REHEARSAL if args.rehearse else FULL
    if args.rehearse:
        args.device = "cpu"
    elif not torch.cuda.is_available():
        print("gpu.py: no CUDA device here; run this on a GPU machine (or --rehearse on the CPU)",
              file=sys.stderr)
        return 1
    # fp32 means fp32 (no TF32 in matmuls or convolutions), so fp32 rates compare with the fp32 limit
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    keep_memory_mapped()  # the host's malloc set as `python -m toolkit` sets it for the trainer
    began = time.perf_counter()
    if args.rehearse:
        header = f"rehearsal on the CPU at toy sizes (its numbers mean nothing); host {machine()}"
    else:
        capability = ".".join(map(str, torch.cuda.get_device_capability(args.device)))
        header = (f"{torch.cuda.get_device_name(args.device)} (compute capability {capability}); "
                  f"host {machine()}")
    print(header, flush=True)
    image = f"ResNet18 3x{scale.size}x{scale.size}"
    sections: list[str] = []

    def report(section: str, last: bool = False) -> None:
        """Add ``section`` and rewrite the report, so that a run cut short keeps what it measured."""
        sections.append(section)
        write_report(args.out, header, began, "\n\n" + "\n\n".join(sections) + "\n",
                     unfinished=not last, echo=False)

    if not args.skip_tests:
        tests = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p",
                                "no:cacheprovider", str(ROOT / "tests")], cwd=ROOT,
                               capture_output=True, text=True)
        tail = (tests.stdout + tests.stderr).strip().splitlines()[-1:]
        report(f"CUDA-marked tests (`pytest -m cuda`): exit {tests.returncode}; {' '.join(tail)}")
        print(sections[-1], flush=True)
    rows = ["| measurement | precision | result | GFLOP/s | of the GEMM limit |", "|---|---|---|---|---|"]
    for precision, dtype in DTYPES.items():
        limit = gemm_gflops(dtype, scale.gemm, scale.gemm_seconds, device=args.device)
        side = scale.gemm or 8192
        product = "matmul" if torch.device(args.device).type == "cuda" else "best of three products"
        rows.append(f"| GEMM {side}x{side} ({product}) | {precision} | | {limit:,.0f} | 100% |")
        rate, batch, flops = gpu_synthesis_rate(args.device, precision, scale)
        rows.append(f"| synthesis, {image}, batch {batch} | {precision} | {rate:,.0f} "
                    f"image-steps/s | {rate * flops / 1e9:,.0f} | {rate * flops / 1e9 / limit:.0%} |")
        trained = train_rate(batch=scale.train_batch, size=scale.size, precision=precision,
                             device=args.device)
        rate, flops = trained.images_per_second, trained.flops
        rows.append(f"| training step, {image}, batch {scale.train_batch} | {precision} | "
                    f"{rate:,.0f} images/s | {rate * flops / 1e9:,.0f} | "
                    f"{rate * flops / 1e9 / limit:.0%} |")
        print("\n".join(rows[-3:]), flush=True)
    report("\n".join(rows))
    # what --compile auto would need for a row of toolkit.hardware.COMPILE_MEASURED on this GPU
    rows = [f"| torch.compile, synthesis, {image} | precision | {SPEEDUP_HEADER} | "
            "one compile | eager GFLOP/s |", "|---|---|---|---|---|---|"]
    flops = step_flops(resnet18(10, 3, scale.size), (3, scale.size, scale.size))
    try:  # a GPU machine without triton's toolchain must not cost the rest of the report
        for precision, eager, _, ratios, seconds, batch in rates(
                scale.size, 3, scale.rounds, device=args.device, batch=scale.synthesis_batch):
            rows.append(f"| batch {batch}, {scale.rounds} alternating rounds | {precision} | "
                        f"{speedup_cells(ratios)} | {seconds:.1f} s | {eager * flops / 1e9:,.0f} |")
            print(rows[-1], flush=True)
    except Exception as error:  # noqa: BLE001 (recorded in the report instead)
        rows.append(f"| failed: {type(error).__name__}: {str(error).splitlines()[0][:200]} | | | | | |")
    report("\n".join(rows))
    with tempfile.TemporaryDirectory() as folder:
        report("Short study (`--precision auto`):\n\n```\n"
               + study(args.device, args.archive, Path(folder), scale) + "\n```")
    print(sections[-1], flush=True)
    # Last, as the least needed (a GPU's minutes are few): the trainer runs eagerly; what would
    # compiling its step gain here? (best of 3 timings each)
    rows = [f"| torch.compile, training step, {image}, batch {scale.train_batch} | precision | "
            "eager images/s | compiled images/s | compiled / eager | first compiled step |",
            "|---|---|---|---|---|---|"]
    for precision in ("fp32", "bf16"):
        # eager again, beside the compiled run: the same moment of the machine for both
        eager = train_rate(batch=scale.train_batch, size=scale.size, precision=precision,
                           device=args.device)
        try:
            compiled = train_rate(batch=scale.train_batch, size=scale.size, precision=precision,
                                  device=args.device, compiled=True)
            rows.append(f"| best of 3 timings each | {precision} | {eager.images_per_second:,.0f} | "
                        f"{compiled.images_per_second:,.0f} | "
                        f"{compiled.images_per_second / eager.images_per_second:.2f}x | "
                        f"{compiled.first_step:.1f} s |")
        except Exception as error:  # noqa: BLE001 (recorded in the report instead)
            rows.append(f"| compiling failed: {type(error).__name__}: "
                        f"{str(error).splitlines()[0][:200]} | {precision} | "
                        f"{eager.images_per_second:,.0f} | | | |")
        print(rows[-1], flush=True)
    report("\n".join(rows), last=True)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
