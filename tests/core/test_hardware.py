"""``--precision auto``: the selection logic, with the hardware query mocked, on any machine."""
from __future__ import annotations

import pytest
import torch
import xarray as xr

import toolkit
from conftest import TINY_RUN
from toolkit import hardware

AMX = "processor : 0\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile\n"
AVX2 = "processor : 0\nflags\t\t: fpu sse2 avx2 fma\n"


@pytest.mark.parametrize("cpuinfo, expected", [
    (AMX, ("bf16", "auto: CPU flag amx_bf16")),
    ("flags : avx512f avx512_bf16\n", ("bf16", "auto: CPU flag avx512_bf16")),
    (AVX2, ("fp32", "auto: no bf16 matrix units on cpu (no amx_bf16 or avx512_bf16)")),
    ("", ("fp32", "auto: no bf16 matrix units on cpu (no amx_bf16 or avx512_bf16)")),
])
def test_auto_picks_bf16_only_where_the_cpu_has_bf16_matrix_units(tmp_path, monkeypatch, cpuinfo, expected):
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    real = hardware.cpu_flags
    monkeypatch.setattr(hardware, "cpu_flags", lambda: real(tmp_path / "cpuinfo"))
    assert hardware.resolve_precision("auto", torch.device("cpu")) == expected
    assert hardware.resolve_precision("fp32", torch.device("cpu")) == ("fp32", "asked for")


@pytest.mark.parametrize("capability, precision", [((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "fp32")])
def test_auto_on_cuda_follows_the_compute_capability(monkeypatch, capability, precision):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    chosen, why = hardware.resolve_precision("auto", torch.device("cuda", 0))
    assert chosen == precision and (str(capability[0]) in why)


def test_a_run_records_what_auto_chose_and_why(tiny_plugin, tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: set())
    out = tmp_path / "auto.nc"
    toolkit.analyze(**{**TINY_RUN, "intervals": (1.0,), "max_steps": 10}, precision="auto", out=out)
    with xr.open_dataset(out) as ds:
        assert ds.attrs["precision"] == "fp32"
        assert ds.attrs["precision_reason"].startswith("auto: no bf16 matrix units on cpu")
        assert '"precision": "fp32"' in ds.attrs["config"]
