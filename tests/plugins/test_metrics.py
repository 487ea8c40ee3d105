"""C, R and their summaries on hand-built features with known answers."""
import numpy as np
import pytest
import xarray as xr

import toolkit
from toolkit import results
from toolkit_plugins.metrics import cosine, zscore


features_dataset = results.dataset_from_features


# Two classes; P[k, j] as 2-d features. P[0,0] = (1,0), P[1,0] = (0,1), P[0,1] = (1,1), P[1,1] = (2,0)
HAND = np.array([[[1.0, 0.0], [1.0, 1.0]],
                 [[0.0, 1.0], [2.0, 0.0]]])[None, None]
S = 1 - 1 / np.sqrt(2)  # 1 - cos 45 degrees


def test_c_and_r_match_the_definitions_on_hand_built_features():
    out = cosine(features_dataset(HAND))
    c, r = out["C"].values[0, 0], out["R"].values[0, 0]
    # C[k, j, i] = d(P[k, j], P[i, j]) (same origin j)
    assert c[0, 0, 1] == pytest.approx(1.0)          # (1,0) vs (0,1)
    assert c[1, 0, 0] == pytest.approx(1.0)
    assert c[0, 1, 1] == pytest.approx(S)            # (1,1) vs (2,0)
    assert c[1, 1, 0] == pytest.approx(S)
    # R[k, j, i] = d(P[k, j], P[k, i]) (same target k)
    assert r[0, 0, 1] == pytest.approx(S)            # (1,0) vs (1,1)
    assert r[0, 1, 0] == pytest.approx(S)
    assert r[1, 0, 1] == pytest.approx(1.0)          # (0,1) vs (2,0)
    assert r[1, 1, 0] == pytest.approx(1.0)
    # self-pairs are exactly zero
    assert c[0, 0, 0] == c[1, 0, 1] == c[0, 1, 0] == c[1, 1, 1] == 0.0
    assert r[0, 0, 0] == r[0, 1, 1] == r[1, 0, 0] == r[1, 1, 1] == 0.0
    assert out["C"].dims == ("interval", "seed", "k", "j", "i")


def test_cosine_agrees_with_a_loop_over_pairs_on_random_features():
    rng = np.random.default_rng(0)
    f = rng.random((2, 3, 4, 4, 5)).astype(np.float32)
    out = cosine(features_dataset(f))

    def d(a, b):
        return 1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    for t, s, k, j, i in np.ndindex(2, 3, 4, 4, 4):
        want_c = 0.0 if i == k else d(f[t, s, k, j], f[t, s, i, j])
        want_r = 0.0 if i == j else d(f[t, s, k, j], f[t, s, k, i])
        assert out["C"].values[t, s, k, j, i] == pytest.approx(want_c, abs=1e-6)
        assert out["R"].values[t, s, k, j, i] == pytest.approx(want_r, abs=1e-6)


def test_zero_feature_vector_counts_as_orthogonal():
    f = HAND.copy()
    f[0, 0, 1, 0] = 0.0
    out = cosine(features_dataset(f))
    assert out["C"].values[0, 0, 0, 0, 1] == pytest.approx(1.0)
    assert np.isfinite(out["C"].values).all() and np.isfinite(out["R"].values).all()


def test_summaries_exclude_self_pairs_by_default_and_include_them_on_request():
    ds = features_dataset(HAND)
    ds = ds.assign(cosine(ds))
    excluded = zscore(ds)
    # C's non-self values: 1, 1, S, S; R's: S, S, 1, 1
    assert excluded["C_mean"].values[0] == pytest.approx((2 + 2 * S) / 4)
    assert excluded["C_std"].values[0] == pytest.approx(np.std([1, 1, S, S]))
    assert excluded["R_mean"].values[0] == pytest.approx((2 + 2 * S) / 4)
    assert excluded["C_mean"].attrs["self_pairs"] == "excluded"
    included = zscore(ds, self_pairs="include")
    assert included["C_mean"].values[0] == pytest.approx((2 + 2 * S) / 8)
    assert included["C_std"].values[0] == pytest.approx(np.std([1, 1, S, S, 0, 0, 0, 0]))
    assert included["C_mean"].attrs["self_pairs"] == "included"


def test_seed_summaries_average_over_seeds():
    rng = np.random.default_rng(1)
    ds = features_dataset(rng.random((1, 3, 3, 3, 4)))
    ds = ds.assign(cosine(ds))
    out = zscore(ds)
    per_seed = []
    for s in range(3):
        c = ds["C"].values[0, s]
        mask = ~np.eye(3, dtype=bool)[:, None, :].repeat(3, axis=1)  # i != k
        per_seed.append(c[mask])
    assert out["C_seed_mean"].values[0] == pytest.approx([v.mean() for v in per_seed], rel=1e-6)
    assert out["C_mean"].values[0] == pytest.approx(np.mean([v.mean() for v in per_seed]), rel=1e-6)
    assert out["C_std"].values[0] == pytest.approx(np.mean([v.std() for v in per_seed]), rel=1e-5)


def planted(values: np.ndarray, n: int) -> xr.Dataset:
    """A dataset whose C holds ``values`` at the non-self pairs of (1 interval, s seeds)."""
    c = np.zeros((1, values.shape[0], n, n, n), np.float32)
    mask = np.ones((n, n, n), bool)
    mask[np.arange(n), :, np.arange(n)] = False
    for s in range(values.shape[0]):
        c[0, s][mask] = values[s]
    ds = features_dataset(np.ones((1, values.shape[0], n, n, 2)))
    dims = ("interval", "seed", "k", "j", "i")
    return ds.assign(C=(dims, c, {"self_pair": "i == k"}), R=(dims, c, {"self_pair": "i == j"}))


def test_outliers_against_the_pooled_reference():
    n = 4  # 4*4*3 = 48 non-self values per seed
    values = np.full((2, 48), 0.5)
    values[0, 0] = 5.0  # one far value among 96
    out = zscore(planted(values, n))
    assert out["C_outlier_fraction"].values[0] == pytest.approx(1 / 96)
    assert out["C_outlier_fraction"].attrs["reference"] == "pooled"


def test_pooled_outlier_fraction_respects_chebyshev_bound():
    rng = np.random.default_rng(2)
    values = rng.standard_cauchy((5, 4 * 4 * 3))  # heavy tails, still <= 1/9 beyond 3 std
    out = zscore(planted(values, 4))
    assert 0 < out["C_outlier_fraction"].values[0] <= 1 / 9


def test_seed_means_reference_flags_values_far_from_the_spread_of_seed_means():
    rng = np.random.default_rng(3)
    values = rng.normal(0.5, 0.1, (5, 48))
    pooled = zscore(planted(values, 4))["C_outlier_fraction"].values[0]
    seed_means = zscore(planted(values, 4), reference="seed_means")["C_outlier_fraction"].values[0]
    assert pooled < 0.02
    assert seed_means > 0.5  # the per-seed means barely vary, so most values look extreme


@pytest.mark.parametrize("options, message", [
    ({"self_pairs": "maybe"}, "self_pairs must be one of exclude, include"),
    ({"reference": "global"}, "reference must be one of pooled, seed, seed_means"),
    ({"threshold": 0}, "threshold must be a positive number"),
    ({"variables": ("BC",)}, "zscore needs variable 'BC'"),
])
def test_zscore_rejects_bad_options(options, message):
    ds = features_dataset(HAND)
    ds = ds.assign(cosine(ds))
    with pytest.raises(toolkit.UsageError, match=message):
        zscore(ds, **options)


def test_no_spread_in_the_reference_gives_nan_not_zero_outliers():
    values = np.full((1, 48), 0.5)  # one seed: the spread of per-seed means is undefined
    out = zscore(planted(values, 4), reference="seed_means")
    assert np.isnan(out["C_outlier_fraction"].values[0])


def test_a_metric_returning_other_dims_than_it_declares_is_named():
    import toolkit
    from toolkit.metrics import apply_metric
    from toolkit.plugins import Registration
    from toolkit.testing import make_results

    registration = Registration("metric", "flat", lambda ds: {"flat": ds["test_accuracy"]}, "p", {
        "variables": {"flat": toolkit.Variable(("interval", "seed"))}})
    with pytest.raises(toolkit.PluginError, match=r"metric 'flat' \(plugin 'p'\) returned flat "
                                                  r"with dims \('interval',\); it declares"):
        apply_metric(make_results(), registration, {})


def test_a_metric_variable_that_cannot_explain_itself_is_warned_of():
    from toolkit.plugins import PluginWarning, Registration

    from toolkit.metrics import apply_metric

    ds = results.dataset_from_features(np.random.default_rng(0).random((1, 1, 3, 3, 4)))

    def sloppy(ds):
        return {"bare": xr.DataArray(np.ones((1, 1)), dims=("interval", "seed")),
                "odd": xr.DataArray(np.zeros(2), dims=("mystery",), attrs={"long_name": "x", "units": "1"}),
                "ranged": (ds["features"].mean(("k", "j", "feature")) + 5).assign_attrs(
                    long_name="y", units="1", valid_range=[0.0, 1.0])}

    registration = Registration("metric", "sloppy", sloppy, "sloppy-plugin", {})
    with pytest.warns(PluginWarning) as caught:
        apply_metric(ds, registration, {})
    text = " | ".join(str(w.message) for w in caught)
    assert "metric 'sloppy' (plugin 'sloppy-plugin'): variable bare has no long_name" in text
    assert "bare has no long_name attribute; has no units" in text
    assert "odd has dims mystery that no variable declares" in text
    assert "ranged breaks its valid_range [0.0, 1.0]" in text


def _sloppy_metric(ds):
    mean = ds["C"].mean(("k", "j", "i"))
    return {"sloppy_bare": mean.drop_attrs(), "sloppy_ranged": (mean + 5).assign_attrs(
        long_name="shifted", units="1", valid_range=[0.0, 2.0])}


class _Sloppy:
    @toolkit.hookimpl
    def register_metrics(self, register):
        register("sloppy", _sloppy_metric)


def test_each_description_problem_is_warned_of_once_per_run(tmp_path):
    """The trial run before any work warns of attributes and dims, the run itself of the values
    (the trial's made-up values cannot break a valid_range truly); each had been said twice."""
    from toolkit.plugins import PluginWarning
    from toolkit.testing import make_results, register_plugin

    ds = make_results()
    ds.attrs.update(results.provenance('{"model": "m"}', model="m", dataset="d"))
    source = results.write_results(ds, tmp_path / "r.nc")
    with register_plugin(_Sloppy(), name="sloppy-plugin"), pytest.warns(PluginWarning) as caught:
        toolkit.remeasure(source, metrics="cosine,sloppy", out=tmp_path / "m.nc")
    said = [str(w.message) for w in caught if "sloppy" in str(w.message)]
    assert len([m for m in said if "sloppy_bare has no long_name" in m]) == 1, said
    assert len([m for m in said if "sloppy_ranged breaks its valid_range [0.0, 2.0]" in m]) == 1, said
    assert len(said) == 2, said
