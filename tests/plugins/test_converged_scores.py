"""Converged-only scores: C and R over the pairs whose two images converged, exactly."""
from __future__ import annotations

import numpy as np

from toolkit.metrics import apply_metric
from toolkit.plugins import get_registry
from toolkit.results import dataset_from_features
from toolkit_plugins.grids import converged_mean, converged_pairs, converged_std, pair_count


def _study(seed: int = 0):
    rng = np.random.default_rng(seed)
    ds = dataset_from_features(rng.normal(size=(2, 3, 4, 4, 5)))   # 2 intervals, 3 seeds, n = 4
    ds = apply_metric(ds, get_registry("metric").get("cosine"), {})
    return ds.assign(converged=(ds["converged"].dims, rng.random(ds["converged"].shape) < 0.6))


def test_converged_means_equal_a_loop_over_pairs():
    ds = _study()
    ok = ds["converged"].values
    c, r = ds["C"].values, ds["R"].values
    for t in range(2):
        kept_c = [c[t, s, k, j, i] for s in range(3) for k in range(4) for j in range(4)
                  for i in range(4) if i != k and ok[t, s, k, j] and ok[t, s, i, j]]
        kept_r = [r[t, s, k, j, i] for s in range(3) for k in range(4) for j in range(4)
                  for i in range(4) if i != j and ok[t, s, k, j] and ok[t, s, k, i]]
        np.testing.assert_allclose(converged_mean(ds, "C")[t], np.mean(np.float64(kept_c)), rtol=1e-12)
        np.testing.assert_allclose(converged_mean(ds, "R")[t], np.mean(np.float64(kept_r)), rtol=1e-12)
        np.testing.assert_allclose(converged_std(ds, "C")[t], np.std(np.float64(kept_c)), rtol=1e-10)
        np.testing.assert_allclose(converged_std(ds, "R")[t], np.std(np.float64(kept_r)), rtol=1e-10)
        assert pair_count(ds)[t] == min(len(kept_c), len(kept_r))


def test_all_converged_is_the_plain_mean_and_none_converged_is_nan():
    ds = _study().assign(converged=lambda d: d["converged"] | True)
    mask = converged_pairs(ds, "C")
    assert mask.sum() == 2 * 3 * 4 * 4 * 3            # every pair but i == k
    plain = ds["C"].astype(np.float64).where(ds["i"] != ds["k"]).mean(("seed", "k", "j", "i")).values
    np.testing.assert_allclose(converged_mean(ds, "C"), plain, rtol=1e-12)
    none = ds.assign(converged=lambda d: d["converged"] & False)
    assert np.isnan(converged_mean(none, "R")).all() and (pair_count(none) == 0).all()


def test_the_primary_score_is_registered_with_its_direction():
    score = get_registry("score").get("C_minus_R_converged").obj
    ds = _study(1)
    np.testing.assert_allclose(score.compute(ds), converged_mean(ds, "C") - converged_mean(ds, "R"))
    assert score.expected == +1 and set(score.needs) == {"C", "R", "converged"}
    assert get_registry("score").get("mean_steps").obj.expected == -1
