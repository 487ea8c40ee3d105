"""examples/replicate-cifar10: its subset of the archive and its report, on tiny stand-ins."""
from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import toolkit
from conftest import TINY_RUN
from tests.plugins.test_imagefolder import png

STUDY = Path(__file__).resolve().parents[2] / "examples" / "replicate-cifar10"


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(STUDY))
    try:
        import report
        import run
        yield run, report
    finally:
        sys.path.remove(str(STUDY))
        sys.modules.pop("run", None), sys.modules.pop("report", None)


def test_subset_is_stratified_and_copies_the_files_byte_for_byte(tmp_path, study):
    run, _ = study
    rng = np.random.default_rng(0)
    members = {f"cifar/{split}/{c}/{i:04d}.png": png(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
               for split, count in (("train", 6), ("test", 3)) for c in ("a", "b") for i in range(count)}
    with zipfile.ZipFile(tmp_path / "all.zip", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    subset = run.make_subset(tmp_path / "all.zip", tmp_path / "subset.zip", train=4, test=2)
    with zipfile.ZipFile(subset) as archive:
        names = archive.namelist()
        for name in names:
            split, label, file = name.split("/")
            assert archive.read(name) == members[f"cifar/{split}/{label}/{file}"]
    counts = {}
    for name in names:
        counts[tuple(name.split("/")[:2])] = counts.get(tuple(name.split("/")[:2]), 0) + 1
    assert counts == {("train", "a"): 4, ("train", "b"): 4, ("test", "a"): 2, ("test", "b"): 2}
    before = subset.stat().st_mtime_ns
    assert run.make_subset(tmp_path / "all.zip", subset) == subset and subset.stat().st_mtime_ns == before
    data = toolkit.plugins.get_registry("dataset").get("imagefolder").obj(subset, False)
    assert data.class_names == ("a", "b") and len(data.train_labels) == 8


@pytest.mark.slow
def test_report_of_a_tiny_study(tmp_path, study, tiny_plugin):
    _, report = study
    results = tmp_path / "results"
    ds = toolkit.analyze(**dict(TINY_RUN, metrics=("cosine", "zscore", "mg")),
                         out=results / "step0.01.nc", make_folder=True)
    here = tmp_path / "here"
    here.mkdir()
    summaries = report.report(results, here)
    assert list(summaries) == ["step0.01"]
    summary = json.loads((here / "summary.json").read_text())["step0.01"]
    assert summary["test_accuracy"] == pytest.approx(ds["test_accuracy"].values.tolist())
    # the default definition is the toolkit's own zscore, as the file holds it
    pooled = summary["outlier_definitions"]["C, reference=pooled, self_pairs=exclude"]
    assert pooled == pytest.approx((100 * ds["C_outlier_fraction"]).values.tolist())
    assert summary["outliers_default"]["R"] == pytest.approx((100 * ds["R_outlier_fraction"]).values)
    # three references x two self-pair choices x (C, R, both)
    assert len(summary["outlier_definitions"]) == 18
    distances = [c["rms_points"] for c in summary["closest_to_poster"]]
    assert distances == sorted(distances)
    at = ds["interval"].values.tolist()  # 0.5 and 1: only the 100 % interval is in the poster
    assert distances[0] == pytest.approx(min(abs(v[-1] - 25.0) for v in summary["outlier_definitions"].values()))
    assert report.rms([30.0, 27.0], at) == pytest.approx(2.0)
    steps = ds["steps"].values
    assert summary["convergence"]["steps_mean"] == pytest.approx(steps.mean((1, 2, 3)))
    assert (here / "comparison.png").stat().st_size > 10_000
    assert (here / "figures-step0.01" / "means.png").is_file() and (results / "report.html").is_file()
    assert "| test accuracy (%) |" in (here / "tables.md").read_text()
    with xr.open_dataset(results / "step0.01.nc") as reopened:
        assert "Mg" in reopened
