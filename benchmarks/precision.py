"""Does bf16 keep the science, and what does it buy? ``--precision fp32`` against ``bf16`` here.

    python benchmarks/precision.py [--out benchmarks/precision-cpu.md] [--work DIR]
                                   [--archive ../shared/data/cifar10-jpeg.zip] [--threads N]

Issue 19's test for making ``--precision auto`` the default: bf16 must keep C and R means within
0.01 of fp32, the same converged images within 1 %, the same test accuracy within 1 point. One run
measures, on this machine:

1. the fp32 and bf16 GEMM limits (``grid.gemm_limits``), at the start and at the end;
2. **digits, the demo's study** (``analyze --model resnet18 --dataset digits``, every default but
   the precision): once in fp32 and once in bf16, training included, from the same seeds;
3. **synthesis alone**: bf16 synthesis from the fp32 run's trained checkpoints (``--checkpoints``),
   so the synthesizer's precision is judged apart from training's (whose runs part ways from the
   first rounding: a different model, not a less exact one);
4. with ``--archive`` (the CIFAR-10 JPEG zip), the same on **a CIFAR-10 checkpoint**: a ResNet18
   trained in fp32 on a stratified subset (``--train_per_class``), then synthesis in fp32 and
   bf16 from it; and a bf16-trained twin for the test accuracy.

Differences: C and R means, max |bf16 - fp32| over intervals; converged images, the share of
grid cells (every seed and interval) whose ``converged`` flag differs; test accuracy, max |bf16 -
fp32| over intervals in points. Speed: each run's own stage times and image-steps per second (the
file's speed attributes). It prints a Markdown report and writes it to ``--out``.
"""
from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import toolkit
from toolkit.files import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import gemm_limits, machine  # noqa: E402 (the benchmarks' shared helpers)

ROOT = Path(__file__).resolve().parents[1]
# the tolerances; ``converged`` is the share of images whose flag differs (same seeds),
# ``converged_share`` the difference of each interval's converged share (any seeds)
TOLERANCE = {"C_mean": 0.01, "R_mean": 0.01, "converged": 0.01, "converged_share": 0.01,
             "test_accuracy": 0.01}


def run(out: Path, **options) -> tuple[dict, float]:
    """``analyze`` into ``out`` (eager unless ``compile`` says otherwise); (the file's numbers we
    compare and its speed attributes, wall s)."""
    began = time.perf_counter()
    ds = toolkit.analyze(out=out, progress=False, plots=False, **{"compile": False, **options})
    return numbers_of(ds), time.perf_counter() - began


def numbers_of(ds) -> dict:
    """The numbers of a results Dataset that the comparisons read, and its speed attributes."""
    numbers = {name: ds[name].values.astype(float) for name in ("C_mean", "R_mean", "test_accuracy")}
    numbers["converged"] = ds["converged"].values.astype(bool)
    numbers["attrs"] = {k: ds.attrs[k] for k in ("precision", "compile", "image_steps", "time_training_s",
                                                  "time_synthesis_s") if k in ds.attrs}
    return numbers


def share(numbers: dict) -> np.ndarray:
    """The converged share of each interval."""
    converged = numbers["converged"]
    return converged.reshape(converged.shape[0], -1).mean(1)


def compare(fp32: dict, bf16: dict) -> dict[str, float]:
    return {"C_mean": float(np.abs(bf16["C_mean"] - fp32["C_mean"]).max()),
            "R_mean": float(np.abs(bf16["R_mean"] - fp32["R_mean"]).max()),
            "converged": float((bf16["converged"] != fp32["converged"]).mean()),
            "converged_share": float(np.abs(share(bf16) - share(fp32)).max()),
            "test_accuracy": float(np.abs(bf16["test_accuracy"] - fp32["test_accuracy"]).max())}


def per_interval(intervals, runs: dict[str, dict]) -> list[str]:
    """Each run's test accuracy, C and R means and converged share per interval."""
    head = ["interval"] + [f"{q} {label}" for q in ("test acc", "C mean", "R mean", "converged")
                           for label in runs]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t, interval in enumerate(intervals):
        cells = [f"{interval:.0%}"]
        cells += [f"{r['test_accuracy'][t]:.1%}" for r in runs.values()]
        cells += [f"{r['C_mean'][t]:.4f}" for r in runs.values()]
        cells += [f"{r['R_mean'][t]:.4f}" for r in runs.values()]
        cells += [f"{share(r)[t]:.1%}" for r in runs.values()]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def speed_row(label: str, numbers: dict, wall: float) -> str:
    a = numbers["attrs"]
    rate = int(a["image_steps"]) / float(a["time_synthesis_s"])
    return (f"| {label} | {a['precision']} | {float(a['time_training_s']):.1f} s | "
            f"{float(a['time_synthesis_s']):.1f} s | {int(a['image_steps']):,} | {rate:,.0f} | {wall:.0f} s |")


def verdict_rows(label: str, diff: dict[str, float], fp32: dict, trained: bool,
                 same_seeds: bool = True) -> list[str]:
    rows = []
    for key, limit in TOLERANCE.items():
        if (key == "test_accuracy" and not trained) or (key == "converged" and not same_seeds):
            continue
        shown = f"{diff[key]:.4f}" if key in ("C_mean", "R_mean") else f"{diff[key]:.1%}"
        scale = (f"fp32 {fp32[key].min():.4f} to {fp32[key].max():.4f}" if key in ("C_mean", "R_mean")
                 else f"fp32 {share(fp32).min():.1%} to {share(fp32).max():.1%} converged"
                 if key.startswith("converged")
                 else f"fp32 {fp32[key].min():.1%} to {fp32[key].max():.1%}")
        rows.append(f"| {label} | {key} | {shown} | {limit:g} | "
                    f"{'yes' if diff[key] <= limit else '**no**'} | {scale} |")
    return rows


def study_parser(doc: str, out: str) -> argparse.ArgumentParser:
    """The options of the benchmarks that run studies (this one and ``compile.py``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / out)
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the runs, kept (default: a temporary one, removed at the end)")
    parser.add_argument("--archive", type=Path, default=None, help="CIFAR-10 zip (ImageFolder layout)")
    parser.add_argument("--train_per_class", type=int, default=500)
    parser.add_argument("--test_per_class", type=int, default=200)
    parser.add_argument("--cifar_epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    return parser


def cifar_study(args: argparse.Namespace, work: Path) -> dict:
    """``analyze``'s options for the CIFAR-10 checkpoint study: a ResNet18 on a stratified subset
    of ``--archive`` (made in ``work``), one interval, 2 seeds, step 0.1, at most 100 steps."""
    sys.path.insert(0, str(ROOT / "examples" / "replicate-cifar10"))
    from run import make_subset  # the study's stratified subset

    data = make_subset(args.archive, work / "cifar10-subset.zip", args.train_per_class,
                       args.test_per_class)
    return dict(model="resnet18", dataset="imagefolder", data_root=str(data), intervals=(1.0,),
                seeds=2, epochs=args.cifar_epochs, train_lr=0.05, train_batch_size=64,
                crop_padding=4, flip=True, lr=0.1, max_steps=100, metrics=("cosine", "zscore"))


def study_tables(args: argparse.Namespace, prefix: str,
                 difference: str) -> tuple[Path, list[str], list[str]]:
    """The folder for the runs (``--work``, else a new temporary one named ``prefix...``, removed
    when the script ends: its studies' files take gigabytes) and the headers of the speed table and
    of the verdict table, whose differences are ``difference``."""
    work = args.work
    if work is None:
        work = Path(tempfile.mkdtemp(prefix=prefix))
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    speed = ["| run | precision | training | synthesis | image-steps | image-steps/s | wall |",
             "|---|---|---|---|---|---|---|"]
    verdict = [f"| study | quantity | max abs {difference} | tolerance | within | scale |",
               "|---|---|---|---|---|---|"]
    return work, speed, verdict


def report(out: Path, header: str, began: float, body: str, *, unfinished: bool = False,
           echo: bool = True) -> None:
    """Write the Markdown report to ``out`` (whole or not at all), and print it unless ``echo`` is
    off: the machine, the command and its seconds, then ``body``, on the command's line or, where
    it starts with a line break, after it. ``unfinished``: the run goes on and will write it again,
    so its seconds are those so far."""
    seconds = f"{time.perf_counter() - began:.0f} s" + (" so far, unfinished" if unfinished else "")
    text = (f"Machine: {header}.\nCommand: `python benchmarks/{Path(sys.argv[0]).name} "
            f"{' '.join(sys.argv[1:])}` ({seconds})." + ("" if body.startswith("\n") else " ") + body)
    if echo:
        print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: tmp.write_text(text))


def main() -> None:
    args = study_parser(__doc__, "precision-cpu.md").parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    header = machine()
    print(header, flush=True)
    start = gemm_limits()
    work, speed, verdict = study_tables(args, "precision-", "bf16 - fp32")

    digits = dict(model="resnet18", dataset="digits")
    f32, wall = run(work / "digits-fp32.nc", precision="fp32", **digits)
    speed.append(speed_row("digits, whole study", f32, wall))
    print(speed[-1], flush=True)
    b16, wall = run(work / "digits-bf16.nc", precision="bf16", **digits)
    speed.append(speed_row("digits, whole study", b16, wall))
    print(speed[-1], flush=True)
    verdict += verdict_rows("digits, trained and synthesised in each", compare(f32, b16), f32, True)
    syn, wall = run(work / "digits-bf16-synthesis.nc", precision="bf16",
                    checkpoints=work / "digits-fp32.work", **digits)
    speed.append(speed_row("digits, synthesis from the fp32 checkpoints", syn, wall))
    verdict += verdict_rows("digits, bf16 synthesis from the fp32 checkpoints", compare(f32, syn), f32, False)
    # the noise floor: the same fp32 study from other seeds (training's and synthesis's)
    other, wall = run(work / "digits-fp32-other-seeds.nc", precision="fp32", seed_start=5, **digits)
    speed.append(speed_row("digits, whole study, seeds 5-9", other, wall))
    verdict += verdict_rows("digits, fp32 against fp32 from other seeds (the run-to-run noise)",
                            compare(f32, other), f32, True, same_seeds=False)
    print("\n".join(verdict), flush=True)
    with toolkit.open_results(work / "digits-fp32.nc") as ds:
        intervals = ds["interval"].values.tolist()
    detail = per_interval(intervals, {"fp32": f32, "bf16": b16, "fp32 seeds 5-9": other})

    if args.archive:
        cifar = cifar_study(args, work)
        c32, wall = run(work / "cifar-fp32.nc", precision="fp32", **cifar)
        speed.append(speed_row("CIFAR-10 subset, trained and synthesised", c32, wall))
        print(speed[-1], flush=True)
        cb, wall = run(work / "cifar-bf16-synthesis.nc", precision="bf16",
                       checkpoints=work / "cifar-fp32.work", **cifar)
        speed.append(speed_row("CIFAR-10 subset, synthesis from the fp32 checkpoint", cb, wall))
        print(speed[-1], flush=True)
        verdict += verdict_rows("CIFAR-10, bf16 synthesis from the fp32 checkpoint",
                                compare(c32, cb), c32, False)
        ct, wall = run(work / "cifar-bf16.nc", precision="bf16", **cifar)
        speed.append(speed_row("CIFAR-10 subset, trained and synthesised", ct, wall))
        verdict += verdict_rows("CIFAR-10, trained and synthesised in each", compare(c32, ct), c32, True)
        print("\n".join(verdict[-4:]), flush=True)

    end = gemm_limits()
    gemm = (f"GEMM limits (grid.gemm_limits, GFLOP/s): fp32 {start['fp32']:,.1f} at the start, "
            f"{end['fp32']:,.1f} at the end; bf16 {start['bf16']:,.1f} and {end['bf16']:,.1f}.")
    report(args.out, header, began, f"{gemm}\n\n" + "\n".join(verdict) + "\n\n" + "\n".join(speed)
           + "\n\nDigits, per interval:\n\n" + "\n".join(detail) + "\n")


if __name__ == "__main__":
    main()
