"""The digits study's README shows what its committed summary.json holds, and each correlation
there is that of the per-interval values it lists (no number typed by hand)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from tests.conftest import check_readme_block, load_script

FOLDER = Path(__file__).resolve().parents[2] / "examples" / "digits-study"


@pytest.fixture(scope="module")
def study():
    return load_script(FOLDER / "summarize.py")


@pytest.fixture(scope="module")
def summary():
    return json.loads((FOLDER / "summary.json").read_text())


def test_the_readme_block_is_rendered_from_the_summary(study, summary):
    check_readme_block(study, FOLDER, summary)


def test_each_correlation_is_that_of_its_values(summary):
    checked = 0
    for score, entry in summary["quality"].items():
        for scope, numbers in entry["scopes"].items():
            if "values" not in numbers:
                continue
            values = np.array([np.nan if v is None else v for v in numbers["values"]], float)
            accuracy = np.array(numbers["accuracy"], float)
            keep = np.isfinite(values)
            if keep.sum() < 3 or np.ptp(values[keep]) == 0:
                continue
            rho = stats.spearmanr(values[keep], accuracy[keep]).statistic
            assert rho == pytest.approx(numbers["spearman"], abs=1e-9), (score, scope)
            checked += 1
    assert checked >= 10


def test_the_tables_accuracy_is_the_quality_points_accuracy(summary):
    for label, model in summary["models"].items():
        accuracy = [row["test acc"] for row in model["rows"]]
        numbers = summary["quality"]["C_mean"]["scopes"][label]
        assert numbers["accuracy"] == pytest.approx(accuracy)
