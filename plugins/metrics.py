"""The paper's metrics: cosine dissimilarity tensors C and R, and their summaries and outliers.

``cosine`` (DESIGN.md 1.5), with ``f`` the penultimate features and ``d(a, b) = 1 - cos(a, b)``::

    C[k, j, i] = d(f(P[k, j]), f(P[i, j]))     same origin j (inter-class)
    R[k, j, i] = d(f(P[k, j]), f(P[k, i]))     same target k (intra-class)

``zscore`` (DESIGN.md 1.8-1.9) summarises each such variable per interval and counts its outliers.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

import toolkit

GRID = ("interval", "seed", "k", "j")


def _unit(features: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(features, axis=-1, keepdims=True)
    # A zero feature vector has no direction: its cosine with anything is taken as 0 (d = 1).
    return features / np.where(norm > 0, norm, 1.0)


def cosine(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """``C`` and ``R`` from ``features``, by batched Gram matrices in float64; and ``BC`` and ``BR``
    the same way from ``B_features`` when the file has the boundary grid ``B``."""
    out = _dissimilarities(ds, "features", "P", "")
    if "B_features" in ds:
        out.update(_dissimilarities(ds, "B_features", "B", "B"))
    return out


def _dissimilarities(ds: xr.Dataset, variable: str, grid: str, prefix: str) -> dict[str, xr.DataArray]:
    f = _unit(ds[variable].transpose(*GRID, "feature").values.astype(np.float64))
    # C: for each origin j, the Gram matrix over targets (k, i); R: for each target k, over (j, i).
    by_origin = np.swapaxes(f, -3, -2)                                      # (..., j, k, F)
    c = 1.0 - np.swapaxes(by_origin @ np.swapaxes(by_origin, -1, -2), -3, -2)  # (..., k, j, i)
    r = 1.0 - f @ np.swapaxes(f, -1, -2)                                    # (..., k, j, i)
    n = f.shape[-2]
    idx = np.arange(n)
    c[..., idx, :, idx] = 0.0    # a vector's dissimilarity to itself is 0, not a rounding error
    r[..., :, idx, idx] = 0.0
    coords = {name: ds[name] for name in GRID}
    coords["i"] = ("i", ds["k"].values)
    dims = (*GRID, "i")
    common = {"units": "1", "valid_range": [0.0, 2.0]}
    kind = "boundary prototype" if prefix else "prototype"
    return {
        f"{prefix}C": xr.DataArray(np.clip(c, 0.0, 2.0).astype(np.float32), coords=coords, dims=dims, attrs={
            **common, "long_name": f"inter-class {kind} dissimilarity (same origin j)",
            "definition": f"{prefix}C[k, j, i] = 1 - cos(f({grid}[k, j]), f({grid}[i, j]))",
            "self_pair": "i == k"}),
        f"{prefix}R": xr.DataArray(np.clip(r, 0.0, 2.0).astype(np.float32), coords=coords, dims=dims, attrs={
            **common, "long_name": f"intra-class {kind} dissimilarity (same target k)",
            "definition": f"{prefix}R[k, j, i] = 1 - cos(f({grid}[k, j]), f({grid}[k, i]))",
            "self_pair": "i == j"}),
    }


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
        variables: which variables to summarise; default ``C`` and ``R``, and ``BC`` and ``BR``
            when the dataset has them (the boundary grid).
        self_pairs: ``"exclude"`` (default) leaves out the self-pairs named by each variable's
            ``self_pair`` attribute, which are 0 by construction; ``"include"`` keeps them (the
            authors' published mean).
        reference: what a z-score is measured against; see ``REFERENCES``.
        threshold: |z| above this is an outlier.
    """
    check_zscore_options(self_pairs=self_pairs, reference=reference, threshold=threshold)
    if variables is None:
        variables = ("C", "R", *(v for v in ("BC", "BR") if v in ds))
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
        note = {"self_pairs": self_pairs + "d", "ddof": 0}
        out[f"{name}_seed_mean"] = seed_mean.assign_attrs(
            long_name=f"mean of {name} over ordered pairs, per seed", units="1", **note)
        out[f"{name}_seed_std"] = seed_std.assign_attrs(
            long_name=f"standard deviation of {name} over ordered pairs, per seed", units="1", **note)
        out[f"{name}_mean"] = seed_mean.mean("seed").assign_attrs(
            long_name=f"mean of {name}, averaged over seeds", units="1", **note)
        out[f"{name}_std"] = seed_std.mean("seed").assign_attrs(
            long_name=f"standard deviation of {name}, averaged over seeds", units="1", **note)
        out[f"{name}_outlier_fraction"] = (outliers / counted.where(counted > 0)).assign_attrs(
            long_name=f"fraction of {name} values with |z| > {threshold:g}", units="1",
            reference=reference, reference_definition=REFERENCES[reference], threshold=threshold,
            **note)
    return out


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


@toolkit.hookimpl
def register_metrics(register):
    register("cosine", cosine, description="C and R: 1 - cosine of penultimate features (n x n x n); "
                                           "BC and BR of the boundary grid B when present")
    register("zscore", zscore, check_options=check_zscore_options,
             description="per-interval mean, std and |z| > 3 outlier fraction of C and R")
