"""``benchmarks/gpu.py``, rehearsed on the CPU: a GPU is lent rarely and briefly, so the script
that measures one must be known to run through before it gets one."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toolkit.hardware import missing_toolchain

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_gpu_script_runs_every_step_in_a_rehearsal_on_the_cpu(tmp_path):
    out = tmp_path / "report.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--rehearse",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = out.read_text()
    assert report.startswith("Machine: rehearsal on the CPU") and "unfinished" not in report
    assert "CUDA-marked tests (`pytest -m cuda`): exit 0" in report
    for precision in ("fp32", "bf16"):
        for row in ("| GEMM 128x128 (best of three products) |", "| synthesis, ResNet18 3x8x8, batch 16 |",
                    "| training step, ResNet18 3x8x8, batch 8 |", "| batch 16, 3 alternating rounds |",
                    "| best of 3 timings each |"):
            if ("rounds" in row or "timings" in row) and missing_toolchain():
                continue  # torch.compile cannot build here: the report says so instead
            assert f"{row} {precision} |" in report, (row, precision)
    assert "failed" not in report or missing_toolchain()
    assert "resnet18 on made-up-cifar: 10 classes" in report and "speed:" in report


def test_without_cuda_the_gpu_script_says_so_and_exits_1():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--skip_tests"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "no CUDA device here" in done.stderr
