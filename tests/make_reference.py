"""Write the reference results files that ``test_identical.py`` compares fresh runs against.

The references pin the numbers and the layout of a results file across refactors: run this only
at a commit whose results are known good, and commit what it writes with a message saying why::

    python tests/make_reference.py

Each reference is a tiny study (the tests' TinyCNN on 3 classes of 6x6 images, 2 intervals, 2
seeds) in one of the shapes a run can take: the paper's prototype grid, the boundary synthesizer
with every probe and score, and C and R streamed into the file. ``reference.json`` records the
CPU capability PyTorch dispatched to, since the last bits of a convolution depend on it; a newer
x86 CPU reproduces an AVX2 reference bit for bit when PyTorch, oneDNN and MKL are held to AVX2
(:data:`DISPATCH_ENV`, :func:`run_dispatched`), which ``test_identical.py`` does.

    python tests/make_reference.py [--case NAME --out FILE]   # one case, into FILE
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from conftest import TINY_RUN, TinyPlugin  # noqa: E402

REFERENCE = HERE / "data" / "reference"
# name -> options beside TINY_RUN
CASES = {
    "prototype": {},
    "boundary": dict(synthesizer="boundary", metrics=("cosine", "zscore", "mg", "madv")),
    "streamed": dict(metrics=("cosine_summaries",), save=("C", "R")),
}
# Attributes that differ between any two runs (when, how long, which versions).
VOLATILE = ("created_at", "wall_time_s", "toolkit_version", "library_versions", "time_training_s",
            "time_synthesis_s", "time_features_s", "time_metrics_s", "time_probes_s",
            "precision_reason")  # says what this machine's hardware offers


def run(name: str, out: Path, overwrite: bool = False):
    """Run case ``name`` into ``out`` with the current code; returns the Dataset."""
    import toolkit
    from toolkit.plugins import get_plugin_manager

    pm = get_plugin_manager()
    registered = pm.get_plugin("tiny-test-plugin") is None
    if registered:
        pm.register(TinyPlugin(), name="tiny-test-plugin")
    try:
        torch.set_num_threads(1)
        # eager, as the references were made (their config says "compile": false)
        return toolkit.analyze(**{**TINY_RUN, **CASES[name]}, device="cpu", compile=False, out=out,
                               overwrite=overwrite, work_dir=out.with_suffix(".work"))
    finally:
        if registered:
            pm.unregister(name="tiny-test-plugin")


def cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


# The environment that makes a newer x86 CPU dispatch as an older one does, per capability, and
# the capabilities that can be held to it (PyTorch does not check: an older CPU would crash).
DISPATCH_ENV = {"AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                         "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
HELD_FROM = {"AVX2": ("AVX512",)}
_TAG = "dispatched="


def can_dispatch(capability: str) -> bool:
    """Whether this CPU can run a process held to ``capability``."""
    return cpu_capability() in HELD_FROM.get(capability, ())


def run_dispatched(name: str, out: Path, capability: str) -> None:
    """Run case ``name`` into ``out`` in a fresh process held to ``capability`` (see
    :func:`can_dispatch`); raises if it failed or dispatched elsewhere."""
    done = subprocess.run([sys.executable, __file__, "--case", name, "--out", str(out)],
                          env={**os.environ, **DISPATCH_ENV[capability]}, capture_output=True,
                          text=True, timeout=600)
    tags = [line[len(_TAG):] for line in done.stdout.splitlines() if line.startswith(_TAG)]
    if done.returncode or tags != [capability]:
        raise RuntimeError(f"make_reference.py --case {name} held to {capability} failed or "
                           f"dispatched to {tags}:\n{done.stderr[-3000:]}")


def main() -> None:
    import shutil

    parser = argparse.ArgumentParser(description="Write the reference results files.")
    parser.add_argument("--case", choices=sorted(CASES), help="run this case alone, into --out")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.case:
        run(args.case, args.out)
        print(f"{_TAG}{cpu_capability()}")  # what this process dispatched to
        return
    REFERENCE.mkdir(parents=True, exist_ok=True)
    for name in CASES:
        out = REFERENCE / f"{name}.nc"
        run(name, out, overwrite=True)
        shutil.rmtree(out.with_suffix(".work"), ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    (REFERENCE / "reference.json").write_text(json.dumps(
        {"commit": commit, "cpu_capability": cpu_capability(), "torch": torch.__version__,
         "cases": sorted(CASES)}, indent=2) + "\n")
    print(f"wrote {', '.join(CASES)} to {REFERENCE} (cpu {cpu_capability()})")


if __name__ == "__main__":
    main()
