"""Precision: the hardware's bf16 matrix units, what ``auto`` picks, what each stage runs at.

``--precision auto``, the default, runs bf16 where it is fast and was measured to keep the
science. Synthesis runs under bf16 autocast (``bf16-synthesis``) where the device has matrix units
for it (a CPU with AMX or AVX512-BF16, ``amx_bf16`` or ``avx512_bf16`` among its flags; a CUDA
device of compute capability 8.0 or later) *and* the images have at least
:data:`BF16_MIN_PIXELS` pixels; training stays fp32. Measured by ``benchmarks/precision.py`` on an
AMX Xeon and an AVX512-BF16 EPYC (docs/performance.md): from the same CIFAR-10 weights, bf16
synthesis kept C and R means within 0.001 of fp32 and flipped no image's convergence on both; at
8x8 (digits) it flipped 1.3 % on one, and training in bf16 made models that parted from fp32 ones
beyond issue 19's bar (digits on both machines, CIFAR-10 on one). So images of fewer pixels than
32x32 (sizes between 8x8 and 32x32 were not measured) and training stay fp32; ``--precision bf16`` asks for both. The
results file records which and why.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays out of this module's import: the options (toolkit.config) read it
    import torch

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# A run's resolved precision -> what (training, synthesis) run at; auto resolves to one of these.
STAGES = {"fp32": ("fp32", "fp32"), "bf16": ("bf16", "bf16"), "bf16-synthesis": ("fp32", "bf16")}
BF16_MIN_SIDE = 32  # the smallest size bf16 was measured faithful at (benchmarks/precision.py)
BF16_MIN_PIXELS = BF16_MIN_SIDE ** 2  # images with fewer pixels stay fp32 under auto


def _cpuinfo_field(field: str, cpuinfo: str | Path) -> str | None:
    """The first ``field: value`` of /proc/cpuinfo (None where it cannot be read, e.g. not on Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field):
            return line.partition(":")[2].strip()
    return None


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read, e.g. not on Linux)."""
    return set((_cpuinfo_field("flags", cpuinfo) or "").split())


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name, for the record beside a measurement."""
    return _cpuinfo_field("model name", cpuinfo) or platform.processor() or "unknown CPU"


def bf16_units(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` has bf16 matrix units, and what says so (a phrase)."""
    if device.type == "cuda":
        import torch

        major, minor = torch.cuda.get_device_capability(device)
        return major >= 8, f"CUDA compute capability {major}.{minor} (bf16 tensor cores from 8.0)"
    if device.type == "cpu":
        found = [flag for flag in CPU_BF16_FLAGS if flag in cpu_flags()]
        return (True, f"CPU flag {found[0]}") if found else (
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
