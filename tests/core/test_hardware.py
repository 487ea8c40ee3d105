"""``--precision auto``, the default: the selection logic, with the hardware query mocked, on any machine;
and the command line's setting of glibc's malloc."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr

import toolkit
from conftest import TINY_RUN
import toolkit_plugins.synthesis as synthesis_plugins
from toolkit import hardware
from toolkit.config import PRECISIONS
from toolkit.hardware import stage_precision
from toolkit.stages import train as train_stage
from toolkit.training import TrainingSettings

AMX = "processor : 0\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile\n"
AVX2 = "processor : 0\nflags\t\t: fpu sse2 avx2 fma\n"


CIFAR = (32, 32)


def fake_cpu(monkeypatch, tmp_path, cpuinfo: str) -> None:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    real = hardware.cpu_flags
    monkeypatch.setattr(hardware, "cpu_flags", lambda: real(tmp_path / "cpuinfo"))


@pytest.mark.parametrize("cpuinfo, expected", [
    (AMX, ("bf16-synthesis", "auto: CPU flag amx_bf16, 32x32 images (bf16 synthesis, fp32 training)")),
    ("flags : avx512f avx512_bf16\n", ("bf16-synthesis", "auto: CPU flag avx512_bf16, 32x32 images "
                                                        "(bf16 synthesis, fp32 training)")),
    (AVX2, ("fp32", "auto: no bf16 matrix units on cpu (no amx_bf16 or avx512_bf16)")),
    ("", ("fp32", "auto: no bf16 matrix units on cpu (no amx_bf16 or avx512_bf16)")),
])
def test_auto_picks_bf16_only_where_the_cpu_has_bf16_matrix_units(tmp_path, monkeypatch, cpuinfo, expected):
    fake_cpu(monkeypatch, tmp_path, cpuinfo)
    assert hardware.resolve_precision("auto", torch.device("cpu"), CIFAR) == expected
    assert hardware.resolve_precision("fp32", torch.device("cpu"), CIFAR) == ("fp32", "asked for")
    assert hardware.resolve_precision("bf16", torch.device("cpu"), (8, 8)) == ("bf16", "asked for")


@pytest.mark.parametrize("size, expected", [((8, 8), "fp32"), ((28, 28), "fp32"), ((32, 32), "bf16-synthesis"),
                                            ((16, 64), "bf16-synthesis"), ((224, 224), "bf16-synthesis")])
def test_auto_keeps_fp32_for_images_smaller_than_bf16_was_measured_faithful_at(tmp_path, monkeypatch, size, expected):
    fake_cpu(monkeypatch, tmp_path, AMX)
    assert hardware.BF16_MIN_PIXELS == hardware.BF16_MIN_SIDE ** 2
    chosen, why = hardware.resolve_precision("auto", torch.device("cpu"), size)
    assert chosen == expected and f"{size[0]}x{size[1]} images" in why
    if expected == "fp32":
        assert why == (f"auto: CPU flag amx_bf16, but {size[0]}x{size[1]} images have fewer than 1,024 "
                       "pixels (32x32), the smallest size bf16 was measured to keep the science at")


@pytest.mark.parametrize("capability, precision", [((8, 0), "bf16-synthesis"), ((9, 0), "bf16-synthesis"),
                                                   ((7, 5), "fp32")])
def test_auto_on_cuda_follows_the_compute_capability(monkeypatch, capability, precision):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    chosen, why = hardware.resolve_precision("auto", torch.device("cuda", 0), CIFAR)
    assert chosen == precision and (str(capability[0]) in why)


@pytest.mark.parametrize("flags, precision, reason", [
    (set(), "fp32", "auto: no bf16 matrix units on cpu"),
    ({"amx_bf16"}, "fp32", "auto: CPU flag amx_bf16, but 6x6 images have fewer than 1,024 pixels"),
])
def test_a_run_by_default_records_what_auto_chose_and_why(tiny_plugin, tmp_path, monkeypatch, flags,
                                                          precision, reason):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    out = tmp_path / "auto.nc"
    toolkit.analyze(**{**TINY_RUN, "intervals": (1.0,), "max_steps": 10}, out=out)  # the tiny data: 6x6
    with xr.open_dataset(out) as ds:
        assert ds.attrs["precision"] == precision
        assert ds.attrs["precision_reason"].startswith(reason)
        assert f'"precision": "{precision}"' in ds.attrs["config"]


def test_auto_on_bf16_hardware_synthesises_in_bf16_and_trains_in_fp32(tiny_plugin, tmp_path, monkeypatch):
    """bf16 runs here even without the hardware (emulated, slower, the same code path)."""
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(hardware, "BF16_MIN_PIXELS", 6 * 6)  # the tiny data's images count as large
    trained, synthesised = [], []
    real_trainer, real_autocast = train_stage.Trainer, synthesis_plugins.autocast
    monkeypatch.setattr(train_stage, "Trainer", lambda *a, **k: (trained.append(a[4].precision),
                                                                   real_trainer(*a, **k))[1])
    monkeypatch.setattr(synthesis_plugins, "autocast", lambda device, precision: (
        synthesised.append(precision), real_autocast(device, precision))[1])
    run = {**TINY_RUN, "intervals": (1.0,), "max_steps": 10, "seeds": 1}
    auto = toolkit.analyze(**run, out=tmp_path / "auto.nc")
    assert (set(trained), set(synthesised)) == ({"fp32"}, {"bf16"})
    assert auto.attrs["precision"] == "bf16-synthesis"
    assert auto.attrs["precision_reason"] == "auto: CPU flag avx512_bf16, 6x6 images (bf16 synthesis, fp32 training)"
    fp32 = toolkit.analyze(**run, precision="fp32", out=tmp_path / "fp32.nc")
    assert not np.array_equal(auto["features"].values, fp32["features"].values)  # bf16 did run


def test_a_settings_object_takes_only_one_stages_precision():
    for settings in (toolkit.SynthesisSettings, lambda precision: TrainingSettings(epochs=1, precision=precision)):
        for unresolved in ("auto", "bf16-synthesis", "fp16"):
            with pytest.raises(ValueError, match=f"precision must be fp32 or bf16, not '{unresolved}'"):
                settings(precision=unresolved)
    with pytest.raises(ValueError, match="precision must be resolved"):
        stage_precision("auto", "synthesis")


def test_a_work_directory_made_at_another_precision_says_how_to_resume_it(tiny_plugin, tmp_path):
    """A run begun under the old default (fp32), or whose auto chose otherwise on other hardware."""
    run = {**TINY_RUN, "intervals": (1.0,), "max_steps": 10, "seeds": 1, "out": tmp_path / "r.nc"}
    toolkit.analyze(**run, precision="fp32")
    (tmp_path / "r.nc").unlink()  # the results file lost; the work directory kept its checkpoint
    with pytest.raises(toolkit.UsageError, match=r"holds work of the same run at --precision fp32 "
                                                 r"\(precision: \"fp32\" there, \"bf16\" here\); rerun "
                                                 r"with --precision fp32 \(and --out .*r\.nc if you gave "
                                                 r"none\) to resume it, or with --fresh"):
        toolkit.analyze(**run, precision="bf16")
    toolkit.analyze(**run, precision="fp32")  # resumes


@pytest.mark.parametrize("precision, training, synthesis", [
    ("fp32", "fp32", "fp32"), ("bf16", "bf16", "bf16"), ("bf16-synthesis", "fp32", "bf16")])
def test_each_precision_says_what_each_stage_runs_at(precision, training, synthesis):
    assert stage_precision(precision, "training") == training
    assert stage_precision(precision, "synthesis") == synthesis


def test_every_precision_the_options_allow_is_auto_or_one_the_stages_know():
    assert set(PRECISIONS) == {"auto"} | set(hardware.STAGES)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc only")
def test_the_command_line_keeps_freed_memory_mapped_with_glibc(tmp_path):
    """After keep_memory_mapped, a 30 MiB block comes from the heap, not from an mmap of its own
    that freeing it would hand back to the kernel (in a fresh process, as the command line runs)."""
    probe = ("import ctypes\n"
             "from toolkit.hardware import keep_memory_mapped\n"
             "libc = ctypes.CDLL(None)\n"
             "libc.malloc.restype = libc.sbrk.restype = ctypes.c_void_p\n"
             "libc.sbrk.argtypes = [ctypes.c_long]\n"
             "applied = keep_memory_mapped()\n"
             "print(applied, libc.malloc(30 * 2**20) < libc.sbrk(0))\n")
    env = {k: v for k, v in os.environ.items() if k not in hardware._MALLOC_VARIABLES}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                          check=True)
    assert done.stdout.split() == ["True", "True"]


def test_keeping_memory_mapped_leaves_a_users_malloc_settings_and_other_libcs_alone(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert hardware.keep_memory_mapped() is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    for variable in hardware._MALLOC_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert hardware.keep_memory_mapped() is False


def test_python_m_toolkit_keeps_memory_mapped_before_anything_runs(monkeypatch, capsys):
    from toolkit.__main__ import main

    calls = []
    monkeypatch.setattr(hardware, "keep_memory_mapped", lambda: calls.append(1) or True)
    assert main(["--help"]) == 0 and calls == [1]


def test_the_cpu_is_recorded_by_name_family_and_model(tmp_path):
    """A virtual machine may name its CPU "AMD EPYC" alone: the numbers tell its generation."""
    cpuinfo = tmp_path / "cpuinfo"
    # "model name" first, so that a field read by its name's prefix would read the wrong one
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 17\n"
                       "flags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert hardware.cpu_model(cpuinfo) == "AMD EPYC (CPU family 25, model 17)"
    assert hardware.cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    cpuinfo.write_text("model name\t: Some CPU\n")
    assert hardware.cpu_model(cpuinfo) == "Some CPU"
    assert hardware.cpu_model(tmp_path / "absent") == (platform.processor() or "unknown CPU")
