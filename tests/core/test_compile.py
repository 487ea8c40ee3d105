"""``--compile auto``, the default: synthesis is compiled only where it is estimated to pay.

The rule runs with the hardware mocked (the CPU's flags, the C++ compiler), on any machine; the
runs spy on the synthesizer's ``torch.compile`` wrapper, so nothing here compiles for real.
"""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import toolkit
import toolkit_plugins.synthesis as synthesis_plugins
from conftest import TINY_RUN
from toolkit import distributed, hardware
from toolkit.model import step_flops
from toolkit.stages import synthesize
from toolkit.training import Trainer

AMX = {"amx_bf16", "avx512_bf16"}
ZEN5 = {"avx512f", "avx512_bf16"}
AVX2 = {"avx2", "fma"}
CPU = torch.device("cpu")
# 1 interval, 2 seeds, 3 classes: 6 class prototypes and 12 intermediaries
RUN = {**TINY_RUN, "intervals": (1.0,), "max_steps": 10, "device": "cpu"}


def no_work():
    raise AssertionError("the estimate is made only where compiling was measured faster")


def work(gflop: float, images: int, steps: int = 10):
    return lambda: (gflop * 1e9, images, steps)


@pytest.fixture
def cpu(monkeypatch):
    """``cpu(flags)``: this CPU has those flags and a C++ compiler."""
    monkeypatch.setattr(hardware, "missing_toolchain", lambda: None)
    return lambda flags: monkeypatch.setattr(hardware, "cpu_flags", lambda: set(flags))


@pytest.mark.parametrize("flags, device, precision, reason", [
    (AMX, "cpu", "fp32", "auto: torch.compile not shown faster on cpu:amx_bf16 in fp32 (speed-up credited: 1.00x)"),
    (AMX, "cpu", "bf16", "auto: torch.compile was not measured on cpu:amx_bf16 in bf16"),
    (AVX2, "cpu", "fp32", "auto: torch.compile was not measured on cpu in fp32"),
    (ZEN5, "cpu", "fp32", "auto: torch.compile not shown faster on cpu:avx512_bf16 in fp32 (speed-up credited: 0.96x)"),
    (ZEN5, "cuda", "bf16", "auto: torch.compile was not measured on cuda in bf16"),
])
def test_auto_leaves_eager_what_was_not_measured_faster(cpu, flags, device, precision, reason):
    cpu(flags)
    assert hardware.resolve_compile("auto", torch.device(device), precision, no_work, 2) == (False, reason)


def test_asked_for_is_taken_as_it_is(cpu):
    cpu(AMX)
    assert hardware.resolve_compile(True, CPU, "fp32", no_work) == (True, "asked for")
    assert hardware.resolve_compile(False, CPU, "bf16", no_work) == (False, "asked for")


def test_auto_compiles_where_the_saved_time_beats_the_compile_time(cpu, monkeypatch):
    cpu(ZEN5)  # 2x faster compiled, 10 s to compile, 100 GFLOP/s eager on 2 threads
    monkeypatch.setattr(hardware, "COMPILE_MEASURED",
                        {"cpu:avx512_bf16": {"bf16": (hardware.Measured(2.0, 10.0, 100.0, 2),)}})
    # 1,000 images x 10 steps x 0.2 GFLOP = 2,000 GFLOP: 20 s eager, saving 10 s: not more than 10
    assert hardware.resolve_compile("auto", CPU, "bf16", work(0.2, 1_000), 2) == (False, (
        "auto: eager (1,000 images x 10 steps x 0.2 GFLOP at 100 GFLOP/s: 20 s of synthesis at "
        "least, compiled 2.00x faster (the speed-up credited on cpu:avx512_bf16 in bf16) saves "
        "10 s, under the 10 s compiling took)"))
    compiled, why = hardware.resolve_compile("auto", CPU, "bf16", work(0.2, 1_001), 2)
    assert compiled and why.startswith("auto: compiled (1,001 images") and why.endswith(
        "saves 10 s, over the 10 s compiling took)")
    # fewer threads than measured: the measured rate still (a low estimate of the time)
    assert hardware.resolve_compile("auto", CPU, "bf16", work(0.2, 1_001), 1)[0] is True
    # eight times the threads, eight times the rate at best: the same work no longer pays
    assert hardware.resolve_compile("auto", CPU, "bf16", work(0.2, 4_000), 16)[0] is False
    assert hardware.resolve_compile("auto", CPU, "bf16", work(0.2, 8_100), 16)[0] is True


@pytest.mark.parametrize("flags, compiled", [(ZEN5, {"cifar100"}), (AMX, set()), (AVX2, set())])
def test_the_measured_table_compiles_only_cifar100s_default_study_on_avx512_bf16(cpu, flags, compiled):
    """What the committed measurements decide for the default study (7 intervals, 5 seeds) of
    ResNet18 on CIFAR-100 and CIFAR-10 (32x32) and on digits (8x8), on 2 threads, in the precision
    auto synthesises at: n prototypes and n(n-1) intermediaries per seed and interval. On the
    AVX512-BF16 kind (a Zen 5 and a Zen 4) bf16 synthesis is credited 1.02x faster compiled (the
    lower of their bounds), which pays for
    CIFAR-100's 350,000 images (hours) and not CIFAR-10's 3,500; fp32 (digits) no faster; the AMX
    Xeon's bf16 and CPUs without bf16 units not measured."""
    resnet18 = toolkit.plugins.get_registry("model").get("resnet18").obj
    cpu(flags)
    decided = set()
    for name, n, channels, size in (("cifar100", 100, 3, 32), ("cifar10", 10, 3, 32),
                                    ("digits", 10, 1, 8)):
        precision = hardware.stage_precision(
            hardware.resolve_precision("auto", CPU, (size, size))[0], "synthesis")
        flops = step_flops(resnet18(n, channels, size), (channels, size, size))
        if hardware.resolve_compile("auto", CPU, precision, lambda: (flops, 7 * 5 * n * n, 10), 2)[0]:
            decided.add(name)
    assert decided == compiled


def test_the_speedup_credited_is_a_lower_confidence_bound_on_the_rounds_geometric_mean():
    # logs 0, 0.1, 0.2: mean 0.1, standard deviation 0.1; Student's t (0.95, 2 dof) = 2.919986
    assert hardware.speedup_bound(np.exp([0.0, 0.1, 0.2])) == pytest.approx(
        math.exp(0.1 - 2.919986 * 0.1 / math.sqrt(3)), rel=1e-6)
    assert hardware.speedup_bound([1.2] * 4) == pytest.approx(1.2)  # rounds that agree: no margin
    scattered = [0.91, 1.33, 1.29, 1.17, 1.31]
    assert hardware.speedup_bound(scattered) < math.exp(np.mean(np.log(scattered)))
    # unlike the lowest round, it does not fall as more rounds like the first ones come in
    assert hardware.speedup_bound(scattered * 2) > hardware.speedup_bound(scattered) > min(scattered)


@pytest.mark.parametrize("ratios", [[1.1, 1.2], [1.1, 0.0, 1.2], [1.1, float("nan"), 1.2]])
def test_the_speedup_bound_needs_three_positive_rounds(ratios):
    with pytest.raises(ValueError, match="3 or more positive ratios"):
        hardware.speedup_bound(ratios)
    with pytest.raises(ValueError, match="confidence must lie between 0 and 1"):
        hardware.speedup_bound([1.1, 1.2, 1.3], confidence=95)


def test_the_table_holds_kinds_and_precisions_that_exist():
    for kind, rows in hardware.COMPILE_MEASURED.items():
        assert kind in {"cpu", *(f"cpu:{flag}" for flag in hardware.CPU_BF16_FLAGS), "cuda"}
        for precision, machines in rows.items():
            assert precision in ("fp32", "bf16") and machines
            for measured in machines:
                assert all(value > 0 for value in measured[:4]) and measured.machine


def test_a_kind_is_credited_with_what_held_on_every_machine_of_it(cpu, monkeypatch):
    two = hardware.Measured(1.3, 20.0, 600.0, 2, "two threads")  # 300 GFLOP/s a thread
    four = hardware.Measured(1.1, 30.0, 800.0, 4, "four threads")  # 200 GFLOP/s a thread
    monkeypatch.setattr(hardware, "COMPILE_MEASURED", {"cpu:avx512_bf16": {"bf16": (two, four)}})
    # the lowest speed-up, the dearest compile, and the fastest eager rate at the run's threads:
    # a rate grows with more threads than measured and is not lowered for fewer
    credited = {threads: hardware.credited_compile("cpu:avx512_bf16", "bf16", threads)
                for threads in (1, 2, 4, 8)}
    assert credited[2] == (1.1, 30.0, 800.0, 2, "two threads and four threads")
    assert [credited[t].gflops for t in (1, 4, 8)] == [800.0, 1200.0, 2400.0]
    assert hardware.credited_compile("cpu:avx512_bf16", "fp32", 2) is None
    assert hardware.credited_compile("cuda", "bf16", 2) is None
    # the committed table: the Zen 4 gained in fp32 (1.05x), the Zen 5 did not, so neither compiles
    monkeypatch.undo()
    cpu(ZEN5)
    assert hardware.credited_compile("cpu:avx512_bf16", "fp32", 2).speedup < 1 < max(
        row.speedup for row in hardware.COMPILE_MEASURED["cpu:avx512_bf16"]["fp32"])
    assert not hardware.resolve_compile("auto", CPU, "fp32", work(10.0, 10**9), 2)[0]


@pytest.mark.parametrize("max_steps, fixed_steps, guessed",
                         [(1000, None, 10), (4, None, 4), (1000, 250, 250)])
def test_the_steps_guessed_are_few_but_never_more_than_an_image_may_take(max_steps, fixed_steps, guessed):
    assert hardware.guessed_steps(max_steps, fixed_steps) == guessed


def test_each_rank_estimates_its_own_share_of_the_run(monkeypatch):
    """Under torchrun each rank synthesises its share and pays the whole compile."""
    seen = []
    monkeypatch.setattr(synthesize, "resolve_compile", lambda requested, device, precision, work,
                        threads: (seen.append(work()), (False, "auto: eager"))[1])
    world = distributed.World(rank=0, size=2)
    monkeypatch.setattr(distributed.World, "from_main", lambda self, make: make())
    seeds = [0, 1]
    config = SimpleNamespace(seed_values=seeds, intervals=(0.5, 1.0), compile="auto")
    run = SimpleNamespace(shape=(3, 1, 6, 6), config=config, world=world, device=CPU,
                          synthesis=toolkit.SynthesisSettings(max_steps=5),
                          pieces=distributed.blocks(seeds, 3, 4), compile_reason="asked for")
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    synthesize.choose_compile(run, model)
    # 2 intervals x 2 seeds x (3 prototypes + 6 intermediaries), halved; 5 steps: max_steps
    assert seen == [(2 * 36 * 3 * 2, 18, 5)]
    assert run.synthesis.compile is False and run.compile_reason == "auto: eager"


def test_without_a_cpp_compiler_auto_stays_eager_and_asking_to_compile_is_refused(
        monkeypatch, tiny_plugin, tmp_path):
    from torch._inductor import config

    with config.patch({"cpp.cxx": (None, "no-such-compiler-anywhere")}):
        assert hardware.missing_toolchain() == "a C++ compiler (g++, or $CXX)"
        monkeypatch.setattr(hardware, "cpu_flags", lambda: ZEN5)
        monkeypatch.setattr(hardware, "COMPILE_MEASURED",
                            {"cpu:avx512_bf16": {"bf16": (hardware.Measured(1.5, 10.0, 100.0, 2),)}})
        assert hardware.resolve_compile("auto", CPU, "bf16", no_work, 2) == (
            False, "auto: torch.compile would need a C++ compiler (g++, or $CXX)")
        with pytest.raises(toolkit.UsageError, match=r"^--compile on the CPU needs a C\+\+ compiler "
                                                     r"\(g\+\+, or \$CXX\) for torch.compile to build "
                                                     r"with: install it, or run with --nocompile$"):
            toolkit.analyze(**RUN, compile=True, out=tmp_path / "r.nc")
        assert list(tmp_path.iterdir()) == []  # refused before anything was written
    with config.patch({"cpp.cxx": (None, "sh")}):  # any program on the PATH stands for one
        assert hardware.missing_toolchain() is None  # this venv's Python has its headers
        monkeypatch.setattr(hardware.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
        assert hardware.missing_toolchain() == "Python's headers (Python.h; e.g. the python3-dev package)"


def test_step_flops_counts_the_forward_and_the_input_gradient_and_leaves_the_model_alone():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).train()
    state = torch.random.get_rng_state()
    # forward: 2 x 12 x 3 multiply-adds; backward: the input's gradient alone, as many again
    assert step_flops(model, (3, 2, 2)) == 2 * (2 * 12 * 3)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), state)
    assert step_flops(nn.Flatten(), (3, 1, 1)) == 0  # no parameters: nothing to multiply


def test_a_run_records_what_auto_chose_and_why(cpu, tiny_plugin, tmp_path, monkeypatch):
    cpu(ZEN5)
    ds = toolkit.analyze(**RUN, out=tmp_path / "fp32.nc")  # the tiny data's 6x6 images: fp32
    assert ds.attrs["compile"] == 0
    measured = hardware.credited_compile("cpu:avx512_bf16", "fp32", 2).speedup
    assert measured <= 1 and ds.attrs["compile_reason"] == (
        f"auto: torch.compile not shown faster on cpu:avx512_bf16 in fp32 (speed-up credited: "
        f"{measured:.2f}x)")
    monkeypatch.setattr(hardware, "BF16_MIN_PIXELS", 6 * 6)  # now bf16 synthesis, faster but too short
    monkeypatch.setattr(hardware, "COMPILE_MEASURED",
                        {"cpu:avx512_bf16": {"bf16": (hardware.Measured(1.07, 47.0, 736.0, 2),)}})
    ds = toolkit.analyze(**RUN, out=tmp_path / "bf16.nc")
    assert ds.attrs["compile"] == 0 and ds.attrs["precision"] == "bf16-synthesis"
    assert ds.attrs["compile_reason"].startswith("auto: eager (18 images x 10 steps x ")
    assert json.loads(ds.attrs["config"])["compile"] == "auto"


def test_where_auto_compiles_the_synthesizer_runs_compiled(cpu, tiny_plugin, tmp_path, monkeypatch):
    cpu(ZEN5)
    monkeypatch.setattr(hardware, "COMPILE_MEASURED",
                        {"cpu:avx512_bf16": {"fp32": (hardware.Measured(2.0, 1e-9, 1.0, 2),)}})
    wrapped = []
    monkeypatch.setattr(synthesis_plugins, "compiled", lambda forward: (wrapped.append(forward), forward)[1])
    ds = toolkit.analyze(**RUN, out=tmp_path / "r.nc")
    assert wrapped and ds.attrs["compile"] == 1
    assert ds.attrs["compile_reason"].startswith("auto: compiled (18 images x 10 steps x ")
    wrapped.clear()
    ds = toolkit.analyze(**RUN, compile=False, out=tmp_path / "eager.nc")
    assert not wrapped and ds.attrs["compile"] == 0 and "compile_reason" not in ds.attrs


def test_compile_is_not_part_of_the_identity_so_work_resumes_across_it(cpu, tiny_plugin, tmp_path,
                                                                       monkeypatch):
    """Compiled and eager synthesis differ by rounding alone, like two CPUs; work made under one
    resumes under the other, and so does work whose identity still names compile (made before)."""
    cpu(ZEN5)
    out = tmp_path / "r.nc"
    toolkit.analyze(**RUN, compile=False, out=out)
    out.unlink()  # the results file lost; the work directory kept its checkpoint
    marker = tmp_path / "r.work" / "run.json"
    identity = json.loads(marker.read_text())
    assert "compile" not in identity["config"]
    identity["config"]["compile"] = False  # as written before compile left the identity
    marker.write_text(json.dumps(identity))
    monkeypatch.setattr(Trainer, "next_stage", lambda *a: pytest.fail("trained again"))
    monkeypatch.setattr(synthesis_plugins, "compiled", lambda forward: forward)  # compiles nothing here
    ds = toolkit.analyze(**RUN, compile=True, out=out)  # resumes, no refusal
    assert ds.attrs["compile"] == 1 and out.is_file()
