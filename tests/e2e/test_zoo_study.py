"""The digits zoo's README shows what its committed summary.json holds, and the summary's
correlations are those of its own per-model values (no number typed by hand)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import check_readme_block, load_script

FOLDER = Path(__file__).resolve().parents[2] / "examples" / "zoo-digits"


@pytest.fixture(scope="module")
def study():
    return load_script(FOLDER / "study.py")


@pytest.fixture(scope="module")
def summary():
    return json.loads((FOLDER / "summary.json").read_text())


def test_the_readme_block_is_rendered_from_the_summary(study, summary):
    check_readme_block(study, FOLDER, summary)


def test_every_tau_is_that_of_the_per_model_values(study, summary):
    models = summary["models"]
    for arm, content in summary["arms"].items():
        names = [n for n in models if arm in models[n]]
        accuracy = np.array([models[n]["test_accuracy"] for n in names])
        assert len(names) == content["models"]
        for score, stats in content["scores"].items():
            values = np.array([np.nan if models[n][arm].get(score) is None else models[n][arm][score]
                               for n in names])
            tau = study.kendall_tau_b(study.oriented(values, stats["expected"]), accuracy)
            assert tau == pytest.approx(stats["tau"], abs=1e-12, nan_ok=True), (arm, score)
            assert stats["with_value"] == int(np.isfinite(values).sum())


def test_the_verdict_follows_the_preregistered_rule(summary):
    v = summary["verdict"]
    assert v["score"] == "C_minus_R_converged"
    assert v["criterion_a"] == (v["tau_ci"][0] > 0)
    assert v["criterion_b"] == (v["difference_ci"][0] > 0)
    assert v["claim_holds"] == (v["criterion_a"] and v["criterion_b"])
    main = summary["arms"]["main"]["scores"]
    strength = {b: abs(main[b]["tau"]) if main[b]["expected"] == 0 else main[b]["tau"]
                for b in ("unconverged_fraction", "mean_steps", "noise_confidence", "weight_norm",
                          "ww_alpha")}
    assert v["best_baseline"] == max(strength, key=strength.get)


def test_statistics_agree_with_scipy(study):
    from scipy import stats

    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 6, 40).astype(float), rng.random(40)
    assert study.kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert study.spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert study.holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert list(study.oriented(np.array([1.0, np.nan, 3.0]), -1)) == [-1.0, -4.0, -3.0]
