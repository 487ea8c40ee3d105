"""Speed from the hardware: its bf16 matrix units, what ``--precision auto`` picks and what each
stage runs at; what ``--compile auto`` picks.

``--precision auto``, the default, runs bf16 where it is fast and was measured to keep the
science. Synthesis runs under bf16 autocast (``bf16-synthesis``) where the device has matrix units
for it (a CPU with AMX or AVX512-BF16, ``amx_bf16`` or ``avx512_bf16`` among its flags; a CUDA
device of compute capability 8.0 or later) *and* the images have at least
:data:`BF16_MIN_PIXELS` pixels; training stays fp32. Measured by ``benchmarks/precision.py`` on an
AMX Xeon and an AVX512-BF16 EPYC (docs/performance.md): from the same CIFAR-10 weights, bf16
synthesis kept C and R means within 0.001 of fp32 and flipped no image's convergence on both; at
8x8 (digits) it flipped 1.3 % on one, and training in bf16 made models that parted from fp32 ones
beyond issue 19's bar (digits on both machines, CIFAR-10 on one). So images of fewer pixels than
32x32 (sizes between 8x8 and 32x32 were not measured) and training stay fp32; ``--precision bf16``
asks for both. The results file records which and why.

``--compile auto``, the default, runs synthesis through ``torch.compile`` only where it is estimated
to pay for itself on this run (:func:`resolve_compile`). Measured by ``benchmarks/compile.py``:
compiled synthesis kept C and R within 0.002 of eager and flipped no image's convergence, but it
gained little and not reliably: on a Zen 5 EPYC (AVX512-BF16, no AMX) 10 alternating rounds read
0.82-2.04x in fp32 and 0.97-1.13x in bf16, on a Zen 4 EPYC 1.03-1.10x and 1.03-1.06x, 1.00x in fp32
on an AMX Xeon, while a real study paid 24-29 s compiling from a cold cache
(:data:`COMPILE_MEASURED`). Auto credits compiling with a lower confidence bound on its speed-up
(:func:`speedup_bound`), the lowest of the machines of a kind measured (:func:`credited_compile`):
on the AVX512-BF16 kind 1.02x in bf16 (the Zen 5's; the Zen 4's is 1.04x), which pays for
CIFAR-100's default study (hours of synthesis) and not for shorter ones; in fp32 0.96x (the Zen 5's;
the Zen 4's is 1.05x), nothing. No GPU has been measured yet.
"""
from __future__ import annotations

import platform
import shutil
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

from toolkit.errors import UsageError

if TYPE_CHECKING:  # torch stays out of this module's import: the options (toolkit.config) read it
    import torch

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# A run's resolved precision -> what (training, synthesis) run at; auto resolves to one of these.
STAGES = {"fp32": ("fp32", "fp32"), "bf16": ("bf16", "bf16"), "bf16-synthesis": ("fp32", "bf16")}
BF16_MIN_SIDE = 32  # the smallest size bf16 was measured faithful at (benchmarks/precision.py)
BF16_MIN_PIXELS = BF16_MIN_SIDE ** 2  # images with fewer pixels stay fp32 under auto


class Measured(NamedTuple):
    """What ``benchmarks/compile.py`` measured of compiled synthesis on one machine."""

    speedup: float  # over eager: speedup_bound of alternating rounds (ResNet18, 32x32, batch 128)
    compile_s: float  # what compiling cost a whole study from a cold cache (else one compile)
    gflops: float  # the eager rate
    threads: int  # torch's threads when measured
    machine: str = ""  # which machine of its kind: cpu_model() there


# device kind (device_kind) -> synthesis precision -> what was measured, one row per machine of
# that kind; not here: not measured, and auto leaves it eager. A study compiles once (batches
# smaller than toolkit_plugins.synthesis.COMPILED_MIN_BATCH run eagerly), yet from a new process
# it paid more than the rounds' one compile: 24.2 s for the 7-interval digits study, 22.5 s for a
# 1-interval CIFAR-10 one on the Zen 5 (benchmarks/compile-cpu-zen5.md), 28.7 s for digits on the
# Zen 4 (benchmarks/compile-cpu-zen4.md). A row whose bound is above 1 is charged the dearer
# study; a row measured no faster keeps one compile's time. The Zen 5 bounds are as that run
# printed them, to 2 decimals (benchmarks/compile.py now prints 3). The AMX row predates
# speedup_bound (it is one timing); at 1.00x it compiles nothing either way. Auto credits a kind
# with what holds on every machine of it measured (credited_compile); so the fp32 row's 28.7 s
# (the Zen 4's study) stands beside the Zen 5's one compile, moot while the Zen 5 keeps it at 0.96x.
_ZEN5 = "AMD EPYC (CPU family 26)"  # Zen 5; its model number was not recorded
_ZEN4 = "AMD EPYC (CPU family 25, model 17)"  # Zen 4
COMPILE_MEASURED: dict[str, dict[str, tuple[Measured, ...]]] = {
    "cpu:amx_bf16": {"fp32": (Measured(1.00, 30.0, 255.0, 2, "Intel Xeon with AMX"),)},
    "cpu:avx512_bf16": {"fp32": (Measured(0.96, 21.3, 309.5, 2, _ZEN5),
                                 Measured(1.052, 28.7, 195.9, 2, _ZEN4)),
                        "bf16": (Measured(1.02, 24.2, 734.1, 2, _ZEN5),
                                 Measured(1.040, 28.7, 424.5, 2, _ZEN4))},
}
# How sure auto must be that compiling is faster: the one-sided confidence of speedup_bound.
COMPILE_CONFIDENCE = 0.95


def speedup_bound(ratios: Sequence[float], confidence: float = COMPILE_CONFIDENCE) -> float:
    """The speed-up that ``--compile auto`` credits compiling with, from alternating rounds'
    ratios (compiled over eager rate): the one-sided ``confidence`` lower bound (Student's t) on
    their geometric mean.

    Fixed on 2026-12-05, before the runs that fill :data:`COMPILE_MEASURED` under it
    (docs/performance.md). The rule before it kept the lowest round, which falls as rounds are
    added; this bound rises with them where compiling is faster, and stays low where the rounds
    scatter."""
    import numpy as np
    from scipy import stats

    if not 0 < confidence < 1:
        raise ValueError(f"speedup_bound's confidence must lie between 0 and 1, not {confidence}")
    ratios = np.asarray(ratios, dtype=float)
    if ratios.ndim != 1 or len(ratios) < 3 or not np.all(np.isfinite(ratios) & (ratios > 0)):
        raise ValueError(f"speedup_bound needs 3 or more positive ratios, not {ratios.tolist()}")
    logs = np.log(ratios)
    margin = stats.t.ppf(confidence, len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs))
    return float(np.exp(logs.mean() - margin))


# A low guess of the steps an image takes before it converges (the means measured, image-steps over
# images in benchmarks/precision-cpu-zen5.md: 24 on digits, 80 on a CIFAR-10 subset), so that auto
# compiles only where even quickly converging images pay for it.
COMPILE_GUESS_STEPS = 10


def credited_compile(kind: str, precision: str, threads: int) -> Measured | None:
    """What ``--compile auto`` credits compiling with on ``kind`` (:func:`device_kind`) in
    ``precision`` on ``threads`` of torch's threads: of the machines of that kind measured
    (:data:`COMPILE_MEASURED`), the lowest speed-up, the dearest compile and the fastest eager
    rate (the least synthesis time to save), so that auto compiles only where compiling would have
    paid on every one of them; None where none was measured. Each machine's rate is scaled to
    ``threads`` as if it grew linearly with more threads, and not lowered for fewer, so that the
    estimate of the synthesis time stays low."""
    rows = COMPILE_MEASURED.get(kind, {}).get(precision, ())
    if not rows:
        return None
    rate = max(row.gflops * max(threads, row.threads) / row.threads for row in rows)
    return Measured(min(row.speedup for row in rows), max(row.compile_s for row in rows), rate,
                    threads, " and ".join(row.machine for row in rows))


def _cpuinfo_field(field: str, cpuinfo: str | Path) -> str | None:
    """The first ``field: value`` of /proc/cpuinfo (None where it cannot be read, e.g. not on Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == field:
            return value.strip()
    return None


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read, e.g. not on Linux)."""
    return set((_cpuinfo_field("flags", cpuinfo) or "").split())


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name, for the record beside a measurement, with its family and model
    numbers where the system gives them: a virtual machine may name its CPU no more than "AMD
    EPYC", and the numbers tell a Zen 4 (family 25) from a Zen 5 (family 26)."""
    name = _cpuinfo_field("model name", cpuinfo) or platform.processor() or "unknown CPU"
    family, model = _cpuinfo_field("cpu family", cpuinfo), _cpuinfo_field("model", cpuinfo)
    return f"{name} (CPU family {family}, model {model})" if family and model else name


def cpu_bf16_flag() -> str | None:
    """The first of :data:`CPU_BF16_FLAGS` this CPU has (its bf16 matrix units), or None."""
    flags = cpu_flags()
    return next((flag for flag in CPU_BF16_FLAGS if flag in flags), None)


def bf16_units(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` has bf16 matrix units, and what says so (a phrase)."""
    if device.type == "cuda":
        import torch

        major, minor = torch.cuda.get_device_capability(device)
        return major >= 8, f"CUDA compute capability {major}.{minor} (bf16 tensor cores from 8.0)"
    if device.type == "cpu":
        flag = cpu_bf16_flag()
        return (True, f"CPU flag {flag}") if flag else (
            False, f"no bf16 matrix units on cpu (no {' or '.join(CPU_BF16_FLAGS)})")
    return False, f"no bf16 matrix units known on {device.type}"


def resolve_precision(requested: str, device: torch.device,
                      image_size: tuple[int, int]) -> tuple[str, str]:
    """``(precision, why)``: ``requested`` itself unless it is ``auto``, which picks
    ``bf16-synthesis`` where :func:`bf16_units` finds them and images of ``image_size`` (height,
    width) have at least :data:`BF16_MIN_PIXELS` pixels, and fp32 elsewhere."""
    if requested != "auto":
        return requested, "asked for"
    fast, why = bf16_units(device)
    if not fast:
        return "fp32", f"auto: {why}"
    height, width = image_size
    if height * width < BF16_MIN_PIXELS:
        return "fp32", (f"auto: {why}, but {height}x{width} images have fewer than "
                        f"{BF16_MIN_PIXELS:,} pixels ({BF16_MIN_SIDE}x{BF16_MIN_SIDE}), the smallest "
                        "size bf16 was measured to keep the science at")
    return "bf16-synthesis", f"auto: {why}, {height}x{width} images (bf16 synthesis, fp32 training)"


def stage_precision(precision: str, stage: str) -> str:
    """What ``stage`` (``training`` or ``synthesis``) runs at under a run's resolved ``precision``
    (``fp32``, ``bf16`` or ``bf16-synthesis``; ``auto`` is resolved first: resolve_precision)."""
    if precision not in STAGES or stage not in ("training", "synthesis"):
        raise ValueError(f"stage_precision({precision!r}, {stage!r}): precision must be resolved "
                         f"({', '.join(STAGES)}) and stage training or synthesis")
    return STAGES[precision][stage == "synthesis"]


def check_stage_precision(owner: str, value: Any) -> None:
    """Refuse a settings object's ``precision`` that is not one stage's: ``fp32`` or ``bf16``."""
    if value not in {p for pair in STAGES.values() for p in pair}:
        raise ValueError(f"{owner}.precision must be fp32 or bf16, not {value!r}: one stage's "
                         "precision (analyze resolves auto and bf16-synthesis: "
                         "toolkit.hardware.stage_precision)")


def device_kind(device: torch.device) -> str:
    """``cuda``; ``cpu:amx_bf16`` or ``cpu:avx512_bf16`` by the CPU's first bf16 flag; else ``cpu``
    (or the device type): the rows of :data:`COMPILE_MEASURED`."""
    if device.type != "cpu":
        return device.type
    flag = cpu_bf16_flag()
    return f"cpu:{flag}" if flag else "cpu"


def missing_toolchain() -> str | None:
    """What ``torch.compile`` lacks on this machine to build CPU code, as a phrase; None where it
    has both a C++ compiler on the PATH (inductor's ``cpp.cxx``: $CXX, else g++) and Python's
    headers (its kernels include ``Python.h``)."""
    from torch._inductor import config

    names = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    if not any(shutil.which(name) for name in names if name):
        return "a C++ compiler (g++, or $CXX)"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return "Python's headers (Python.h; e.g. the python3-dev package)"
    return None


def check_compile(requested: bool | str, device: torch.device) -> None:
    """Refuse ``--compile`` (True) on a CPU where ``torch.compile`` cannot build its code."""
    missing = requested is True and device.type == "cpu" and missing_toolchain()
    if missing:
        raise UsageError(f"--compile on the CPU needs {missing} for torch.compile to build with: "
                         "install it, or run with --nocompile")


def guessed_steps(max_steps: int, fixed_steps: int | None) -> int:
    """The steps an image is guessed to take, low: ``fixed_steps`` where set, else
    :data:`COMPILE_GUESS_STEPS` or ``max_steps`` where that is fewer."""
    return fixed_steps or min(COMPILE_GUESS_STEPS, max_steps)


def resolve_compile(requested: bool | str, device: torch.device, precision: str,
                    work: Callable[[], tuple[float, int, int]], threads: int = 1) -> tuple[bool, str]:
    """``(compile, why)``: ``requested`` itself unless it is ``auto``, which compiles where the
    synthesis is estimated to save more time than compiling takes.

    ``precision`` is what synthesis runs at (fp32 or bf16); ``work()`` gives this process's share
    of the synthesis as ``(FLOPs of one image-step, images, steps an image)``, with the steps
    guessed low (:func:`guessed_steps`), and is called only where compiling was measured faster on
    this kind of device in this precision; ``threads`` is torch's CPU threads, to which the eager
    rate measured is scaled (:func:`credited_compile`).
    """
    if requested != "auto":
        return bool(requested), "asked for"
    kind = device_kind(device)
    measured = credited_compile(kind, precision, threads)
    if measured is None:
        return False, f"auto: torch.compile was not measured on {kind} in {precision}"
    if measured.speedup <= 1:
        return False, (f"auto: torch.compile not shown faster on {kind} in {precision} "
                       f"(speed-up credited: {measured.speedup:.2f}x)")
    missing = device.type == "cpu" and missing_toolchain()
    if missing:
        return False, f"auto: torch.compile would need {missing}"
    flops, images, steps = work()
    rate = measured.gflops * 1e9  # at these threads
    seconds = images * steps * flops / rate
    saved = seconds * (1 - 1 / measured.speedup)
    estimate = (f"{images:,} images x {steps} steps x {flops / 1e9:.3g} GFLOP at {rate / 1e9:,.0f} "
                f"GFLOP/s: {seconds:,.0f} s of synthesis at least, compiled {measured.speedup:.2f}x "
                f"faster (the speed-up credited on {kind} in {precision})")
    if saved <= measured.compile_s:
        return False, (f"auto: eager ({estimate} saves {saved:,.0f} s, under the "
                       f"{measured.compile_s:.0f} s compiling took)")
    return True, (f"auto: compiled ({estimate} saves {saved:,.0f} s, over the "
                  f"{measured.compile_s:.0f} s compiling took)")


# glibc's mallopt parameters and the values the command line sets (see keep_memory_mapped).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 * 2**20   # glibc's largest on 64-bit systems
_TRIM_THRESHOLD = 2**31 - 1    # mallopt takes a C int
_MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_memory_mapped() -> bool:
    """Have glibc's malloc keep the memory a training step frees for the next one.

    By default glibc gives a block of 128 KiB or more its own ``mmap`` (raising that threshold as
    such blocks are freed) and hands the top of its heap back to the kernel once 128 KiB or more of
    it is free; a training step that allocates and frees the same tens of MB each time may then
    page-fault them in anew every step. Some processes fall into that and stay there: the demo's
    training read 63.8, 62.6 and 48.6 s in three fresh processes against 49.5, 45.5 and 43.0 s with
    this (alternating, Zen 5 EPYC, docs/performance.md). It raises the mmap threshold to glibc's
    largest (32 MiB) and the trim threshold to 2 GiB, which changes no number a run computes.

    ``python -m toolkit`` calls it for its own process; a library call leaves the host process's
    allocator alone. It does nothing but on Linux with glibc, or where the user set
    ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES``. Returns whether
    it applied.
    """
    import ctypes
    import os

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or any(
            variable in os.environ for variable in _MALLOC_VARIABLES):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
