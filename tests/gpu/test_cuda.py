"""The CUDA-only code paths, run where a CUDA device exists (``benchmarks/gpu.sh`` runs them).

Skipped elsewhere (the ``cuda`` marker; see ``tests/conftest.py``): pinned-memory reads of the
synthesizer's counts, bf16 autocast chosen by ``--precision auto`` from the compute capability,
the GPU's automatic micro-batch size, the device checks, and NCCL with SyncBatchNorm across ranks.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import toolkit
from toolkit import hardware
from toolkit.__main__ import main
from toolkit.model import frozen
from toolkit.plugins import get_registry
from tests.conftest import TINY_RUN

pytestmark = pytest.mark.cuda
TINY_CLI = Path(__file__).resolve().parents[1] / "tiny_cli.py"


def test_synthesis_on_cuda_follows_the_cpu(trained_tiny, monkeypatch):
    """The same weights and starts give the same images on both devices in fp32 (the CUDA queue
    reads its counts through pinned memory, one iteration late)."""
    model, data = trained_tiny
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 means fp32 on both
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    synth = get_registry("synthesizer").get("prototype").obj
    torch.manual_seed(0)
    start, targets = torch.rand(12, 1, 6, 6), torch.arange(12) % 3
    settings = toolkit.SynthesisSettings(max_steps=100, batch_size=5, precision="fp32")
    with frozen(model):
        cpu = synth(model, start, targets, settings).check(start, "prototype")
    gpu_model = copy.deepcopy(model).to("cuda")  # its own BatchNorm-folded view, on the GPU
    with frozen(gpu_model):
        gpu = synth(gpu_model, start.to("cuda"), targets.to("cuda"), settings)
    gpu = gpu.check(start, "prototype")  # the contract's CPU copy
    assert gpu.images.device.type == "cpu"
    same = gpu.steps == cpu.steps
    assert same.float().mean() >= 0.9, (cpu.steps, gpu.steps)
    torch.testing.assert_close(gpu.images[same], cpu.images[same], atol=2e-3, rtol=0)
    assert torch.equal(gpu.converged, cpu.converged)


def test_a_study_on_cuda_under_auto_precision(tiny_plugin, tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "BF16_MIN_PIXELS", 6 * 6)  # the tiny data's 6x6 images count as large
    ds = toolkit.analyze(out=tmp_path / "gpu.nc", **{**TINY_RUN, "device": "cuda",
                                                     "precision": "auto", "batch_size": "auto"})
    major, _ = torch.cuda.get_device_capability()
    assert ds.attrs["device"].startswith("cuda")
    assert ds.attrs["precision"] == ("bf16-synthesis" if major >= 8 else "fp32")
    assert "CUDA compute capability" in ds.attrs["precision_reason"]
    assert int(ds.attrs["synthesis_batch_size"]) >= 64  # the GPU's own automatic size
    assert float(ds["test_accuracy"][-1]) >= 0.9
    assert np.isfinite(ds["C"].values).all() and np.isfinite(ds["R"].values).all()


def test_a_cuda_index_this_machine_lacks_is_refused_in_one_line(capsys, tmp_path):
    index = torch.cuda.device_count()
    assert main(["analyze", "--dataset", "digits", "--device", f"cuda:{index}",
                 "--out", str(tmp_path / "r.nc")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"this machine has {index} CUDA device(s)" in err
    assert not (tmp_path / "r.nc").exists()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs a GPU per rank: fewer than 2 here")
def test_two_ranks_on_two_gpus_with_nccl_and_syncbatchnorm(tmp_path):
    out = tmp_path / "ranks.nc"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOOLKIT_LOAD_ENTRYPOINTS": "0"}
    args = ["--model", "tiny-cnn", "--dataset", "tiny", "--intervals", "0.5,1", "--seeds", "2",
            "--epochs", "25", "--train_lr", "0.1", "--train_batch_size", "16", "--max_steps", "100",
            "--device", "cuda", "--noprogress", "--noplots", "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", str(TINY_CLI), "analyze", *args],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    with toolkit.open_results(out) as ds:
        assert np.isfinite(ds["C"].values).all() and float(ds["test_accuracy"][-1]) >= 0.9


def test_the_trainers_optimizer_on_cuda_is_torchs_sgd():
    """Off the CPU the in-place path stands aside for torch's multi-tensor kernels: from the same
    gradients (no backward pass, whose kernels need not repeat their bits), the same weights as
    torch's SGD, and the gradients left as they were."""
    from toolkit.training import InPlaceSGD, TrainingSettings

    torch.manual_seed(0)
    start = [torch.randn(shape, device="cuda") for shape in ((64, 3, 3, 3), (64,), (10, 64))]
    ours = [torch.nn.Parameter(w.clone()) for w in start]
    torchs = [torch.nn.Parameter(w.clone()) for w in start]
    mine = TrainingSettings(epochs=1).optimizer(ours)
    theirs = torch.optim.SGD(torchs, **mine.defaults)
    assert type(mine) is InPlaceSGD
    for _ in range(3):
        for a, b in zip(ours, torchs):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        mine.step()
        theirs.step()
        assert all(torch.equal(a, b) and torch.equal(a.grad, b.grad) for a, b in zip(ours, torchs))
