"""The documented path, proven: pip-install examples/toolkit-plugin-example into a fresh
environment, see it in ``toolkit plugins``, run ``analyze`` with it, and run its own tests there.

The environment's site-packages chain to this one's through a ``.pth`` file, so torch and the
toolkit are not reinstalled and nothing is downloaded: the test works offline on a clean machine.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import toolkit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "toolkit-plugin-example"

pytestmark = pytest.mark.slow


def run(argv, cwd, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TOOLKIT_") and k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, **kwargs)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of the fresh environment, the copy of the example it was installed from)."""
    root = tmp_path_factory.mktemp("example-plugin")
    source = shutil.copytree(EXAMPLE, root / "toolkit-plugin-example", ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    env = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", env], cwd=root)
    python = env / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       cwd=root).stdout.strip())
    (purelib / "chain_to_toolkit_env.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         source], cwd=root)
    where = run([python, "-c", "import toolkit_plugin_example as m; print(m.__file__)"], cwd=root)
    assert Path(where.stdout.strip()).is_relative_to(purelib)   # the installed copy, not the source
    return python, source


def test_the_installed_example_is_listed_by_toolkit_plugins(installed, tmp_path):
    python, _ = installed
    listed = json.loads(run([python, "-m", "toolkit", "plugins"], cwd=tmp_path).stdout)
    (example,) = [p for p in listed if p["name"] == "example"]
    assert example["version"] == "0.1.0" and example["errors"] == {}
    assert example["registers"] == {"models": ["example-mlp"], "datasets": ["example-shapes"],
                                    "synthesizers": ["example-signed"],
                                    "metrics": ["example-feature-norm"],
                                    "probes": ["example-brightness"],
                                    "figures": ["example-feature-norm"],
                                    "scores": ["example-feature-norm"]}


def test_analyze_runs_with_every_part_from_the_installed_example(installed, tmp_path):
    python, _ = installed
    out = tmp_path / "example.nc"
    done = run([python, "-m", "toolkit", "analyze", "--model", "example-mlp", "--dataset",
                "example-shapes", "--synthesizer", "example-signed", "--metrics",
                "cosine,zscore,example-feature-norm", "--metric_options",
                '{"example-feature-norm": {"over": "prototypes"}}', "--intervals", "0.5,1",
                "--seeds", "1", "--out", out, "--noprogress"], cwd=tmp_path)
    assert f"results: {out}" in done.stdout
    with toolkit.open_results(out) as ds:
        assert ds.attrs["model"] == "example-mlp" and ds.attrs["synthesizer"] == "example-signed"
        assert list(ds["class_name"].values) == ["row", "column", "diagonal", "antidiagonal"]
        assert ds["feature_norm"].dims == ("interval", "seed") and (ds["feature_norm"] > 0).all()
        assert ds["feature_norm"].attrs["over"] == "prototypes"
        assert ds["brightness"].dims == ("interval", "seed", "k", "j")
        assert float(ds["test_accuracy"][-1]) > 0.8


def test_the_examples_own_tests_pass_where_it_is_installed(installed):
    python, source = installed
    run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=source)
