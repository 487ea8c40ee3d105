"""Write the reference results files that ``test_identical.py`` compares fresh runs against.

The references pin the numbers and the layout of a results file across refactors: run this only
at a commit whose results are known good, and commit what it writes with a message saying why::

    python tests/make_reference.py

Each reference is a tiny study (the tests' TinyCNN on 3 classes of 6x6 images, 2 intervals, 2
seeds) in one of the shapes a run can take: the paper's prototype grid, the boundary synthesizer
with every probe and score, and C and R streamed into the file. ``reference.json`` records the
CPU capability PyTorch dispatched to, since the last bits of a convolution depend on it.
"""
from __future__ import annotations

import json
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
            "time_synthesis_s", "time_features_s", "time_metrics_s", "time_probes_s")


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
        return toolkit.analyze(**{**TINY_RUN, **CASES[name]}, device="cpu", out=out,
                               overwrite=overwrite, work_dir=out.with_suffix(".work"))
    finally:
        if registered:
            pm.unregister(name="tiny-test-plugin")


def cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def main() -> None:
    import shutil

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
