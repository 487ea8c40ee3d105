"""Does ``torch.compile`` pay for synthesis here, and does it keep the science?

    python benchmarks/compile.py [--out benchmarks/compile-cpu.md] [--work DIR]
                                 [--archive ../shared/data/cifar10-jpeg.zip] [--threads N]

What ``--compile auto`` decides from (``toolkit.hardware.COMPILE_MEASURED``), measured on this
machine, and the check that compiling changes nothing but rounding:

1. **the table's row**: for fp32 and bf16, the ``prototype`` synthesizer's image-steps per second
   on ResNet18 at 32x32 (the device's automatic batch, random weights, 10 fixed steps), eager and
   compiled in ``--rounds`` alternating rounds; the first compiled call's extra seconds (one
   compile, from an empty inductor cache as on a machine's first run); the eager GFLOP/s;
2. **the same at 8x8** (digits' size);
3. **science, and what a real study pays**: the digits study trained eager in fp32, then its
   synthesis again from the same checkpoints compiled, in its own process from an empty inductor
   cache (all the compiling a first run does: one compile, in a new process); with
   ``--archive``, the same from a ResNet18 trained on a CIFAR-10 subset, in the precision ``auto``
   synthesises at here. Differences as ``benchmarks/precision.py`` reports them (C and R means,
   converged images), against issue 19's tolerances; and what compiling cost each study (its
   compiled synthesis time less the eager one over the median speed-up).

It ends with this machine's rows to add to its kind's in ``toolkit.hardware.COMPILE_MEASURED``
(auto credits a kind with what held on every machine of it measured): the speed-up's lower bound
(``toolkit.hardware.speedup_bound`` of the rounds: one-sided 95 %, geometric mean; the rounds are
printed to 4 decimals, the bound to 3), what the dearest study paid compiling (one compile's time
where the bound is not above 1), the eager GFLOP/s, the threads and the CPU.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Compiling from a cold cache, as a user's first run does: inductor's own cache would hide the cost.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import torch  # noqa: E402 (after the cache's folder is set)

import toolkit
from toolkit.hardware import (COMPILE_CONFIDENCE, cpu_model, device_kind, resolve_precision,
                              speedup_bound, stage_precision)
from toolkit.model import step_flops

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import (empty_inductor_cache, gemm_limits, machine, resnet18,  # noqa: E402
                  synthesis_rate)
from precision import (cifar_study, compare, numbers_of, report, run, speed_row,  # noqa: E402
                       study_parser, study_tables, verdict_rows)


def rates(size: int, channels: int, rounds: int, device: str = "cpu", batch: int | None = None,
          steps: int = 10) -> list[tuple[str, float, float, list[float], float, int]]:
    """(precision, eager and compiled image-steps/s (medians), the speed-ups of ``rounds``
    alternating rounds, seconds compiling took, batch) of ``steps`` synthesis steps at ``size``
    x ``size`` on ``device`` (``batch``: default the device's own); a fresh model and an empty
    inductor cache for each precision, so each compiles from scratch (the runs recorded in
    compile-cpu-zen5.md had one cache per process: bf16's compile, and those at 8x8, may have
    reused kernels that fp32's at 32x32 had built). Rounds alternate, so that a slow spell of
    the machine hits both alike, and so does which of the two runs first (eager first in even
    rounds, compiled in odd ones; from 2026-12-05, after the Zen 5 row's run, which always ran
    eager first)."""
    out = []
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = resnet18(10, channels, size).to(device)

        def timed(compile: bool) -> tuple[float, int, float]:
            return synthesis_rate(model, channels, size, steps, precision, compile=compile,
                                  device=device, batch=batch)

        with empty_inductor_cache():
            _, used, first = timed(False)
            _, _, first_compiled = timed(True)
            eager, compiled = [], []
            for round_ in range(rounds):
                for compile in ((False, True) if round_ % 2 == 0 else (True, False)):
                    (compiled if compile else eager).append(timed(compile)[0])
        ratios = [c / e for e, c in zip(eager, compiled)]
        out.append((precision, statistics.median(eager), statistics.median(compiled), ratios,
                    first_compiled - first, used))
        print(f"{size}x{size} {precision}: speed-ups {', '.join(f'{r:.4f}' for r in ratios)}; "
              f"compiling {first_compiled - first:.1f} s", flush=True)
    return out


SPEEDUP_HEADER = f"speed-ups: lowest, median, highest | {COMPILE_CONFIDENCE:.0%} lower bound"


def speedup_cells(ratios: list[float]) -> str:
    """The two table cells under :data:`SPEEDUP_HEADER` for one run's rounds."""
    return (f"{min(ratios):.2f}x, {statistics.median(ratios):.2f}x, {max(ratios):.2f}x | "
            f"{speedup_bound(ratios):.3f}x")


def cold(out: Path, **options) -> tuple[dict, float]:
    """``analyze`` into ``out`` in a fresh process with an empty inductor cache, as a user's first
    compiled run: every compile it needs is paid in full. Its wall time includes the process's
    start."""
    code = ("import json, sys, toolkit; toolkit.analyze(**json.loads(sys.argv[1]), progress=False, "
            "plots=False)")
    options = {k: str(v) if isinstance(v, Path) else v for k, v in {**options, "out": out}.items()}
    with tempfile.TemporaryDirectory(prefix="inductor-cold-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache,
               "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the threads of the eager run
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, json.dumps(options)], env=env, check=True)
        wall = time.perf_counter() - began
    with toolkit.open_results(out) as ds:
        return numbers_of(ds), wall


def main() -> None:
    parser = study_parser(__doc__, "compile-cpu.md")
    parser.add_argument("--rounds", type=int, default=10,
                        help="alternating eager/compiled timings (3 or more)")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error(f"--rounds must be 3 or more for a confidence bound, not {args.rounds}")
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    header = f"{machine()}; device kind {device_kind(torch.device('cpu'))}"
    print(header, flush=True)
    limits = gemm_limits()
    table = [f"| size | precision | eager image-steps/s | compiled | {SPEEDUP_HEADER} | compiling | "
             "eager GFLOP/s (of the limit) | batch |", "|---|---|---|---|---|---|---|---|---|"]
    measured, medians = {}, {}  # precision -> (speed-up's bound, one compile, GFLOP/s) at 32x32
    for size, channels in ((32, 3), (8, 1)):
        flops = step_flops(resnet18(10, channels, size), (channels, size, size))
        for precision, eager, compiled, ratios, seconds, batch in rates(size, channels, args.rounds):
            gflops, bound = eager * flops / 1e9, speedup_bound(ratios)
            table.append(f"| {size}x{size} | {precision} | {eager:,.1f} | {compiled:,.1f} | "
                         f"{speedup_cells(ratios)} | {seconds:.1f} s | {gflops:,.0f} "
                         f"({gflops / limits[precision]:.0%}) | {batch} |")
            medians[size, precision] = statistics.median(ratios)
            if size == 32:  # the model auto decides for is ResNet18 at 32x32
                measured[precision] = (bound, seconds, gflops)

    work, speed, verdict = study_tables(args, "compile-", "compiled - eager")

    paid = {}  # study -> what compiling cost it: compiled synthesis less eager over the speed-up

    def pair(label: str, size: int, options: dict) -> None:
        eager, wall = run(work / f"{label}-eager.nc", **options)
        speed.append(speed_row(f"{label}, trained, synthesised eager", eager, wall))
        print(speed[-1], flush=True)
        compiled, wall = cold(work / f"{label}-compiled.nc", compile=True,
                              checkpoints=work / f"{label}-eager.work", **options)
        speed.append(speed_row(f"{label}, synthesised compiled from the same checkpoints (cold "
                               "cache, own process)", compiled, wall))
        print(speed[-1], flush=True)
        verdict.extend(verdict_rows(label, compare(eager, compiled), eager, trained=False))
        print("\n".join(verdict[-4:]), flush=True)
        speedup = medians[size, stage_precision(options["precision"], "synthesis")]
        paid[label] = (float(compiled["attrs"]["time_synthesis_s"])
                       - float(eager["attrs"]["time_synthesis_s"]) / speedup)

    pair("digits", 8, dict(model="resnet18", dataset="digits", precision="fp32"))
    if args.archive:
        auto, _ = resolve_precision("auto", torch.device("cpu"), (32, 32))
        pair("CIFAR-10 subset", 32, {**cifar_study(args, work), "precision": auto})
        print(f"CIFAR-10: precision {auto} (synthesis {stage_precision(auto, 'synthesis')})")

    # where compiling is faster (the bound above 1), charge it what the dearest study paid
    cost = max(paid.values())
    kind = device_kind(torch.device("cpu"))
    paste = "; ".join(f"to `COMPILE_MEASURED[{kind!r}][{precision!r}]`: `Measured({bound:.3f}, "
                      f"{cost if bound > 1 else seconds:.1f}, {gflops:.1f}, {torch.get_num_threads()}, "
                      f"{cpu_model()!r})`" for precision, (bound, seconds, gflops) in measured.items())
    studies = "; ".join(f"{label} {seconds:.1f} s" for label, seconds in paid.items())
    limits_text = (f"GEMM limits (GFLOP/s, the best of grid.gemm_gflops' products): fp32 "
                   f"{limits['fp32']:,.1f}, bf16 {limits['bf16']:,.1f}.")
    report(args.out, header, began, f"{limits_text}\n\n" + "\n".join(table)
           + f"\n\nWhat compiling cost each study: {studies}. This machine's rows, each to add to "
           f"its kind's in `toolkit.hardware.COMPILE_MEASURED`: {paste}.\n\n"
           + "\n".join(verdict) + "\n\n" + "\n".join(speed) + "\n")


if __name__ == "__main__":
    main()
