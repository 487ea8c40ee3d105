"""The paper's metrics: cosine dissimilarity tensors C and R, and their summaries and outliers.

``cosine`` (DESIGN.md 1.5), with ``f`` the penultimate features and ``d(a, b) = 1 - cos(a, b)``::

    C[k, j, i] = d(f(P[k, j]), f(P[i, j]))     same origin j (inter-class)
    R[k, j, i] = d(f(P[k, j]), f(P[k, i]))     same target k (intra-class)

``zscore`` (DESIGN.md 1.8-1.9) summarises each such variable per interval and counts its outliers.
"""
from __future__ import annotations

import itertools

import numpy as np
import xarray as xr

import toolkit
from toolkit.schema import feature_grids

GRID = ("interval", "seed", "k", "j")
PAIRS = (*GRID, "i")


def unit(features: np.ndarray) -> np.ndarray:
    """``features`` (..., F) scaled to unit length along the last axis (float64 in, float64 out)."""
    norm = np.linalg.norm(features, axis=-1, keepdims=True)
    # A zero feature vector has no direction: its cosine with anything is taken as 0 (d = 1).
    return features / np.where(norm > 0, norm, 1.0)


def cosine(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """``C`` and ``R`` from ``features``, by batched Gram matrices in float64; and ``{prefix}C``
    and ``{prefix}R`` the same way from every other feature grid the file holds
    (``toolkit.schema.feature_grids``: ``BC`` and ``BR`` from the boundary grid's ``B_features``)."""
    out: dict[str, xr.DataArray] = {}
    for variable, grid in feature_grids(ds):
        out.update(_dissimilarities(ds, variable, grid))
    return out


def _dissimilarities(ds: xr.Dataset, variable: str, grid) -> dict[str, xr.DataArray]:
    f = unit(ds[variable].transpose(*GRID, "feature").values.astype(np.float64))
    coords = {name: ds[name] for name in GRID}
    coords["i"] = ("i", ds["k"].values)
    dims = (*GRID, "i")
    prefix = grid.prefix
    attrs = cosine_attrs(prefix, grid.images, grid.kind)
    return {
        f"{prefix}C": xr.DataArray(_c_values(f), coords=coords, dims=dims, attrs=attrs["C"]),
        f"{prefix}R": xr.DataArray(_r_values(f), coords=coords, dims=dims, attrs=attrs["R"]),
    }


def _c_values(f: np.ndarray) -> np.ndarray:
    """``C[..., k, j, i]`` (float32) from unit features ``f`` (..., k, j, F) of any origins j: for
    each origin, the Gram matrix over targets (k, i)."""
    by_origin = np.swapaxes(f, -3, -2)                                      # (..., j, k, F)
    c = 1.0 - np.swapaxes(by_origin @ np.swapaxes(by_origin, -1, -2), -3, -2)  # (..., k, j, i)
    idx = np.arange(c.shape[-1])
    c[..., idx, :, idx] = 0.0    # a vector's dissimilarity to itself is 0, not a rounding error
    return np.clip(c, 0.0, 2.0).astype(np.float32)


def _r_values(f: np.ndarray) -> np.ndarray:
    """``R[..., k, j, i]`` (float32) from unit features ``f`` (..., k, j, F) of any targets k: for
    each target, the Gram matrix over origins (j, i)."""
    r = 1.0 - f @ np.swapaxes(f, -1, -2)                                    # (..., k, j, i)
    idx = np.arange(r.shape[-1])
    r[..., :, idx, idx] = 0.0
    return np.clip(r, 0.0, 2.0).astype(np.float32)


def stream_cosine(ds: xr.Dataset) -> dict[str, "toolkit.results.Streamed"]:
    """``C`` and ``R`` as ``cosine`` computes them (and those of every other feature grid),
    handed to the results writer block by block (a slab of origins j for C, of
    targets k for R) so that none is ever whole in memory. Each block normalises only the
    features it needs; its values equal ``cosine``'s exactly."""
    from toolkit.results import Streamed

    def streams(variable: str, grid) -> dict[str, Streamed]:
        features = ds[variable].transpose(*GRID, "feature")
        prefix = grid.prefix
        attrs = cosine_attrs(prefix, grid.images, grid.kind)

        def c_block(t: int, s: int, start: int, stop: int) -> np.ndarray:
            return _c_values(unit(features[t, s, :, start:stop].values.astype(np.float64)))

        def r_block(t: int, s: int, start: int, stop: int) -> np.ndarray:
            return _r_values(unit(features[t, s, start:stop].values.astype(np.float64)))

        return {f"{prefix}C": Streamed(along="j", block=c_block, attrs=attrs["C"]),
                f"{prefix}R": Streamed(along="k", block=r_block, attrs=attrs["R"])}

    out: dict[str, Streamed] = {}
    for variable, grid in feature_grids(ds):
        out.update(streams(variable, grid))
    return out


def cosine_attrs(prefix: str = "", grid: str = "P", kind: str = "prototype") -> dict[str, dict]:
    """The attributes of ``{prefix}C`` and ``{prefix}R`` computed from the grid ``grid`` of images
    of the kind ``kind``."""
    common = {"units": "1", "valid_range": [0.0, 2.0]}
    return {
        "C": {**common, "long_name": f"inter-class {kind} dissimilarity (same origin j)",
              "definition": f"{prefix}C[k, j, i] = 1 - cos(f({grid}[k, j]), f({grid}[i, j]))",
              "self_pair": "i == k"},
        "R": {**common, "long_name": f"intra-class {kind} dissimilarity (same target k)",
              "definition": f"{prefix}R[k, j, i] = 1 - cos(f({grid}[k, j]), f({grid}[k, i]))",
              "self_pair": "i == j"},
    }


COSINE_ATTRS = cosine_attrs()


SELF_PAIRS = ("exclude", "include")
REFERENCES = {
    "pooled": "each value against the mean and std of all its interval's values (all seeds)",
    "seed": "each value against the mean and std of its own (interval, seed) values",
    "seed_means": "each value against the mean and std across seeds of the per-seed means",
}


def zscore(ds: xr.Dataset, *, variables=None, self_pairs: str = "exclude",
           reference: str = "pooled", threshold: float = 3.0) -> dict[str, xr.DataArray]:
    """Per-interval summaries and outlier fractions of each variable in ``variables``.

    For a variable ``V`` (dims ``interval, seed, k, j, i``) it adds ``V_seed_mean`` and
    ``V_seed_std`` (interval, seed): mean and population std over the ordered pairs of one
    (interval, seed); ``V_mean`` and ``V_std`` (interval): their averages over seeds; and
    ``V_outlier_fraction`` (interval): the fraction of values whose z-score has magnitude above
    ``threshold``, with respect to ``reference`` (one of ``REFERENCES``).

    Args:
        variables: which variables to summarise; default ``C`` and ``R`` and those of every
            other feature grid the dataset holds (``toolkit.schema.feature_grids``).
        self_pairs: ``"exclude"`` (default) leaves out the self-pairs named by each variable's
            ``self_pair`` attribute, which are 0 by construction; ``"include"`` keeps them (the
            authors' published mean).
        reference: what a z-score is measured against; see ``REFERENCES``.
        threshold: |z| above this is an outlier.
    """
    check_zscore_options(self_pairs=self_pairs, reference=reference, threshold=threshold)
    if variables is None:
        variables = tuple(f"{grid.prefix}{v}" for _, grid in feature_grids(ds) for v in "CR"
                          if f"{grid.prefix}{v}" in ds or not grid.prefix)
    out: dict[str, xr.DataArray] = {}
    pairs = ("k", "j", "i")
    for name in variables:
        if name not in ds:
            raise toolkit.UsageError(f"zscore needs variable {name!r}; list a metric that makes it "
                                     f"(e.g. cosine) before zscore")
        values = ds[name].astype(np.float64)  # sums over millions of values: float64, whatever the backend
        if self_pairs == "exclude":
            values = values.where(values["i"] != values[_self_pair_dim(values, name)])
        seed_mean, seed_std = values.mean(pairs), values.std(pairs)
        if reference == "pooled":
            mu, sd = values.mean(("seed", *pairs)), values.std(("seed", *pairs))
        elif reference == "seed":
            mu, sd = seed_mean, seed_std
        else:
            mu, sd = seed_mean.mean("seed"), seed_mean.std("seed")
        # Where the reference has no spread, z is undefined: those values are not counted, and an
        # interval with no defined z gets NaN rather than a reassuring 0 %.
        z = (values - mu) / sd.where(sd > 0)
        counted = z.notnull().sum(("seed", *pairs))
        outliers = (abs(z) > threshold).sum(("seed", *pairs))
        out.update(_summaries(name, seed_mean, seed_std, outliers, counted,
                              self_pairs=self_pairs, reference=reference, threshold=threshold))
    return out


def _summaries(name: str, seed_mean: xr.DataArray, seed_std: xr.DataArray, outliers: xr.DataArray,
               counted: xr.DataArray, *, self_pairs: str, reference: str,
               threshold: float) -> dict[str, xr.DataArray]:
    """The summary variables of ``name`` from its per-seed moments and outlier counts."""
    note = {"self_pairs": self_pairs + "d", "ddof": 0}
    return {
        f"{name}_seed_mean": seed_mean.assign_attrs(
            long_name=f"mean of {name} over ordered pairs, per seed", units="1", **note),
        f"{name}_seed_std": seed_std.assign_attrs(
            long_name=f"standard deviation of {name} over ordered pairs, per seed", units="1", **note),
        f"{name}_mean": seed_mean.mean("seed").assign_attrs(
            long_name=f"mean of {name}, averaged over seeds", units="1", **note),
        f"{name}_std": seed_std.mean("seed").assign_attrs(
            long_name=f"standard deviation of {name}, averaged over seeds", units="1", **note),
        f"{name}_outlier_fraction": (outliers / counted.where(counted > 0)).assign_attrs(
            long_name=f"fraction of {name} values with |z| > {threshold:g}", units="1",
            reference=reference, reference_definition=REFERENCES[reference], threshold=threshold,
            **note),
    }


# Values of C or R held at once by ``cosine_summaries`` (float64: 32 MiB).
BLOCK_VALUES = 1 << 22


def cosine_summaries(ds: xr.Dataset, *, self_pairs: str = "exclude", reference: str = "pooled",
                     threshold: float = 3.0, block_values: int = BLOCK_VALUES
                     ) -> dict[str, xr.DataArray]:
    """What ``cosine`` then ``zscore`` give for C and R (and for every other feature grid the file
    holds), less the tensors themselves, computed block by block from the features: memory for about ``block_values`` values at a time instead
    of the ``2 n^3`` per (interval, seed) of the tensors (8 GB at n = 1000).

    Each block (a slab of origins j for C, of targets k for R) is computed as ``cosine`` computes
    it, float32 values included; per-seed means and standard deviations are merged block by block
    (Chan's pairwise update, float64), and a second pass counts the outliers. The results equal
    ``zscore``'s up to float64 rounding of the sums (about 1e-15). Options: as ``zscore``.
    """
    check_zscore_options(self_pairs=self_pairs, reference=reference, threshold=threshold)
    t_count, s_count, n = ds.sizes["interval"], ds.sizes["seed"], ds.sizes["k"]
    width = max(1, block_values // (n * n))
    eye = np.eye(n, dtype=bool)

    def blocks(f: np.ndarray, name: str, t: int, s: int):
        unit = f[t, s]                                                      # (k, j, F)
        for a in range(0, n, width):
            if name == "C":                     # origins a.. of C[k, j, i]
                v = _c_values(unit[:, a:a + width]).astype(np.float64)
                self_pair = np.broadcast_to(eye[:, None, :], v.shape)        # i == k
            else:                               # targets a.. of R[k, j, i]
                v = _r_values(unit[a:a + width]).astype(np.float64)
                self_pair = np.broadcast_to(eye[None], v.shape)              # i == j
            yield v[~self_pair] if self_pairs == "exclude" else v.ravel()

    coords = {"interval": ds["interval"], "seed": ds["seed"]}
    out: dict[str, xr.DataArray] = {}
    # C and R from the grid P, and those of every other feature grid the file holds.
    for (variable, grid), name in itertools.product(list(feature_grids(ds)), ("C", "R")):
        prefix = grid.prefix
        f = unit(ds[variable].transpose(*GRID, "feature").values.astype(np.float64))
        count = np.zeros((t_count, s_count))
        mean = np.zeros((t_count, s_count))
        m2 = np.zeros((t_count, s_count))
        for t in range(t_count):
            for s in range(s_count):
                for v in blocks(f, name, t, s):
                    count[t, s], mean[t, s], m2[t, s] = _merge(
                        count[t, s], mean[t, s], m2[t, s], v.size, v.mean(), ((v - v.mean()) ** 2).sum())
        seed_mean, seed_std = mean, np.sqrt(m2 / count)
        if reference == "pooled":
            total, mu, pooled_m2 = count[:, 0], mean[:, 0], m2[:, 0]
            for s in range(1, s_count):
                total, mu, pooled_m2 = _merge(total, mu, pooled_m2, count[:, s], mean[:, s], m2[:, s])
            mu, sd = mu[:, None] * np.ones(s_count), np.sqrt(pooled_m2 / total)[:, None] * np.ones(s_count)
        elif reference == "seed":
            mu, sd = seed_mean, seed_std
        else:
            mu = seed_mean.mean(1, keepdims=True) * np.ones(s_count)
            sd = seed_mean.std(1, keepdims=True) * np.ones(s_count)
        counted, outliers = np.zeros(t_count, np.int64), np.zeros(t_count, np.int64)
        for t in range(t_count):
            for s in range(s_count):
                if not sd[t, s] > 0:
                    continue  # z undefined where the reference has no spread: not counted
                for v in blocks(f, name, t, s):
                    counted[t] += v.size
                    outliers[t] += int((np.abs((v - mu[t, s]) / sd[t, s]) > threshold).sum())
        attrs = cosine_attrs(prefix, grid.images, grid.kind)[name]  # as xarray's reductions of the tensor keep them
        out.update(_summaries(
            prefix + name, xr.DataArray(seed_mean, coords=coords, dims=("interval", "seed"), attrs=attrs),
            xr.DataArray(seed_std, coords=coords, dims=("interval", "seed"), attrs=attrs),
            xr.DataArray(outliers, coords={"interval": ds["interval"]}, dims="interval", attrs=attrs),
            xr.DataArray(counted, coords={"interval": ds["interval"]}, dims="interval", attrs=attrs),
            self_pairs=self_pairs, reference=reference, threshold=threshold))
    return out


def _merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Count, mean and sum of squared deviations of two sets together (Chan et al.)."""
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta ** 2 * (n_a * n_b / n)


def check_zscore_options(*, variables=None, self_pairs: str = "exclude", reference: str = "pooled",
                         threshold: float = 3.0) -> None:
    """Raise ``UsageError`` for options ``zscore`` cannot use (called before any training)."""
    if self_pairs not in SELF_PAIRS:
        raise toolkit.UsageError(f"zscore self_pairs must be one of {', '.join(SELF_PAIRS)}; "
                                 f"got {self_pairs!r}")
    if reference not in REFERENCES:
        raise toolkit.UsageError(f"zscore reference must be one of {', '.join(REFERENCES)}; "
                                 f"got {reference!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise toolkit.UsageError(f"zscore threshold must be a positive number; got {threshold!r}")


def _self_pair_dim(values: xr.DataArray, name: str) -> str:
    rule = values.attrs.get("self_pair", "")
    dim = rule.replace(" ", "").removeprefix("i==")
    if dim not in values.dims or dim == "i":
        raise toolkit.UsageError(f"variable {name!r} has no self_pair attribute like 'i == k'; "
                                 "pass self_pairs='include' to summarise every value")
    return dim


def pair_variables(prefix: str = "", grid: str = "P", kind: str = "prototype"
                   ) -> dict[str, toolkit.Variable]:
    """The declarations of ``{prefix}C`` and ``{prefix}R``, which ``cosine`` computes from the
    feature grid of the images ``grid``."""
    attrs = cosine_attrs(prefix, grid, kind)
    return {f"{prefix}{v}": toolkit.Variable(PAIRS, attrs[v]) for v in ("C", "R")}


def summary_variables(prefix: str = "") -> dict[str, toolkit.Variable]:
    """The declarations of the summaries ``zscore`` and ``cosine_summaries`` give of ``{prefix}C``
    and ``{prefix}R``; those of ``C`` and ``R`` themselves are columns of the summary table."""
    names = (f"{prefix}C", f"{prefix}R")
    stats = {"seed_mean": (("interval", "seed"), "mean of {} over ordered pairs, per seed", None),
             "seed_std": (("interval", "seed"), "standard deviation of {} over ordered pairs, per "
                                                "seed", None),
             "mean": (("interval",), "mean of {}, averaged over seeds", "{:.4f}"),
             "std": (("interval",), "standard deviation of {}, averaged over seeds", "{:.4f}"),
             "outlier_fraction": (("interval",), "fraction of {} values with |z| > threshold",
                                  "{:.2%}")}
    order = [(name, stat) for stat in ("seed_mean", "seed_std") for name in names]
    order += [(name, stat) for name in names for stat in ("mean", "std")]
    order += [(name, "outlier_fraction") for name in names]
    out = {}
    for name, stat in order:
        dims, what, fmt = stats[stat]
        heading = f"{name}_{stat}".replace("_outlier_fraction", "_out")
        out[f"{name}_{stat}"] = toolkit.Variable(
            dims, {"long_name": what.format(name), "units": "1"},
            column=(heading, fmt) if fmt and not prefix else None)
    return out


@toolkit.hookimpl
def register_metrics(register):
    register("cosine", cosine, variables=pair_variables(),
             description="C and R: 1 - cosine of penultimate features (n x n x n); the same for "
                         "every other feature grid (BC and BR of the boundary grid B)")
    register("zscore", zscore, check_options=check_zscore_options, variables=summary_variables(),
             description="per-interval mean, std and |z| > 3 outlier fraction of C and R")
    register("cosine_summaries", cosine_summaries, check_options=check_zscore_options,
             streams=stream_cosine, variables=summary_variables(),
             description="zscore's summaries of C and R, computed block by block from the "
                         "features without the n x n x n tensors (for large n)")
