"""What the hardware offers, for the choices ``auto`` makes: bf16 matrix units.

``--precision auto`` runs bf16 autocast where the device has matrix units for it (a CPU with AMX
or AVX512-BF16, ``amx_bf16`` or ``avx512_bf16`` among its flags; a CUDA device of compute
capability 8.0 or later) and fp32 elsewhere; the results file records which and why.
"""
from __future__ import annotations

import platform
from pathlib import Path

import torch

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


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
        major, minor = torch.cuda.get_device_capability(device)
        return major >= 8, f"CUDA compute capability {major}.{minor} (bf16 tensor cores from 8.0)"
    if device.type == "cpu":
        found = [flag for flag in CPU_BF16_FLAGS if flag in cpu_flags()]
        return (True, f"CPU flag {found[0]}") if found else (
            False, f"no bf16 matrix units on cpu (no {' or '.join(CPU_BF16_FLAGS)})")
    return False, f"no bf16 matrix units known on {device.type}"


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """``(precision, why)``: ``requested`` itself unless it is ``auto``, which picks bf16 where
    :func:`bf16_units` finds them and fp32 elsewhere."""
    if requested != "auto":
        return requested, "asked for"
    fast, why = bf16_units(device)
    return ("bf16" if fast else "fp32"), f"auto: {why}"
