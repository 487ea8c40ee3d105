"""The quality report: correlations of data-free scores with test accuracy equal scipy's."""
import math

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from toolkit.__main__ import main
from toolkit.quality_report import correlate, quality, quality_table, scores
from toolkit.results import dataset_from_features, write_results


def run(accuracy, c_mean, r_mean, mg=None, unconverged=None):
    """A results dataset holding the given per-interval numbers."""
    t = len(accuracy)
    ds = dataset_from_features(np.random.default_rng(t).random((t, 2, 3, 3, 4)))
    ds["test_accuracy"] = ("interval", np.asarray(accuracy, float))
    ds["C_mean"] = ("interval", np.asarray(c_mean, float))
    ds["R_mean"] = ("interval", np.asarray(r_mean, float))
    if mg is not None:
        ds["Mg"] = ("interval", np.asarray(mg, float))
    if unconverged is not None:  # that many grid cells of each interval missed the threshold
        converged = np.ones((t, 2, 3, 3), bool)
        for index, count in enumerate(unconverged):
            converged[index].flat[:count] = False
        ds["converged"] = (("interval", "seed", "k", "j"), converged)
    return ds.assign_attrs(toolkit_schema_version=1, model="m", dataset="d")


A = run([0.2, 0.5, 0.6, 0.8, 0.9], [0.3, 0.35, 0.33, 0.5, 0.6], [0.1, 0.12, 0.09, 0.1, 0.11],
        mg=[0.6, 0.5, 0.55, 0.4, 0.3], unconverged=[5, 3, 2, 0, 1])
B = run([0.4, 0.7, 0.95], [0.2, 0.4, 0.45], [0.2, 0.1, 0.15])


def by(report, score, scope):
    (found,) = [c for c in report.correlations if c.score == score and c.scope == scope]
    return found


def test_correlations_equal_scipys_per_file_and_pooled():
    report = quality([A, B], labels=["a", "b"])
    for score in ("C_mean", "R_mean", "C_minus_R"):
        x_a, x_b = (scores()[score].compute(ds) for ds in (A, B))
        for scope, x, acc in (("a", x_a, A.test_accuracy.values), ("b", x_b, B.test_accuracy.values),
                              ("all", np.concatenate([x_a, x_b]),
                               np.concatenate([A.test_accuracy.values, B.test_accuracy.values]))):
            c = by(report, score, scope)
            assert c.points == len(x)
            assert c.spearman == pytest.approx(stats.spearmanr(x, acc).statistic)
            assert c.spearman_p == pytest.approx(stats.spearmanr(x, acc).pvalue)
            assert c.pearson == pytest.approx(stats.pearsonr(x, acc).statistic)
            assert c.pearson_p == pytest.approx(stats.pearsonr(x, acc).pvalue)
    # Mg is in one file only: it is correlated over that file's intervals, and "all" holds just them
    assert by(report, "Mg", "all").points == 5
    assert by(report, "Mg", "a").spearman == pytest.approx(-0.9)


def test_expected_signs_and_the_ranking():
    report = quality([A], labels=["a"])
    assert by(report, "C_mean", "a").holds is True        # rises with accuracy, as expected
    assert by(report, "Mg", "a").holds is False            # falls here: the expectation fails
    assert by(report, "R_mean", "a").holds is None         # nothing claimed
    ranked = [c.score for c in report.ranking()]
    assert ranked.index("C_mean") < ranked.index("Mg")
    assert ranked[-1] == "Mg" or math.isnan(report.ranking()[-1].spearman)
    unconverged = by(report, "unconverged_fraction", "a")
    assert unconverged.spearman == pytest.approx(
        stats.spearmanr([5 / 18, 3 / 18, 2 / 18, 0, 1 / 18], A.test_accuracy.values).statistic)
    table = quality_table(report)
    assert table.splitlines()[0].split()[:3] == ["rank", "score", "scope"]
    assert "NO" in table and "yes" in table


def test_undefined_correlations_are_nan_not_an_error():
    assert all(math.isnan(v) for v in correlate(np.array([1.0, 2.0]), np.array([0.1, 0.2])))
    assert all(math.isnan(v) for v in correlate(np.ones(4), np.arange(4.0)))


@pytest.mark.slow
def test_the_command_prints_the_table_and_draws_the_figure(tmp_path, capsys):
    paths = [tmp_path / "a.nc", tmp_path / "b.nc"]
    for ds, path in zip((A, B), paths):
        write_results(ds, path)
    figure = tmp_path / "q.png"
    assert main(["quality", *map(str, paths), "--out", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "a.nc" in out and "b.nc" in out and " all " in out and f"figure: {figure}" in out
    assert figure.read_bytes().startswith(b"\x89PNG")
    assert main(["quality", *map(str, paths), "--out", str(figure)]) == 2     # kept, not overwritten
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("just text"), "is not a readable netCDF file"),
    (lambda p: xr.Dataset({"x": ("t", [1.0])}).to_netcdf(p), "is not a toolkit results file"),
    (lambda p: None, "no results file at"),
])
def test_bad_files_are_one_line_errors(tmp_path, capsys, make, message):
    path = tmp_path / "x.nc"
    make(path)
    assert main(["quality", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_no_files_is_a_one_line_error(capsys):
    assert main(["quality"]) == 2
    assert "quality needs at least one results file" in capsys.readouterr().err


def test_two_intervals_say_why_there_is_no_correlation_and_the_figure_names_the_run(tmp_path):
    from toolkit.quality_report import quality_figure

    from test_plotting import make_results

    two = make_results(intervals=(0.5, 1.0))
    report = quality([two])
    text = quality_table(report)
    assert "fewer than 3 intervals with a value" in text and "--intervals" in text
    fig = quality_figure(report)
    assert "resnet18 on digits" in fig._suptitle.get_text()


def test_a_constant_score_says_why_its_correlation_is_nan():
    flat = run([0.2, 0.5, 0.6, 0.8], [0.3, 0.3, 0.3, 0.3], [0.1, 0.12, 0.09, 0.1])
    text = quality_table(quality([flat], labels=["flat"]))
    last = text.splitlines()[-1]
    assert last.startswith("nan: ") and "C_mean (flat)" in last
    assert "the score (or test accuracy) takes one value over those intervals" in last
    assert "R_mean (flat)" not in last  # a score that varies is not listed
