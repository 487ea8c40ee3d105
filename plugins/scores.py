"""The data-free scores of Dean & Sarkar (2023), *Fantastic DNN Classifiers and How to Identify
them without Data*: ``Mg`` and ``Madv``, per (interval, seed) and averaged over seeds.

- ``mg``: ``Mg = 1 - mean cos(f(p_a), f(p_b))`` over ordered pairs of class prototypes ``a != b``
  (``f`` the penultimate features; ``p_c = P[c, c]``). With ``self_pairs="include"`` the mean runs
  over all ``n^2`` pairs, self-pairs counting as dissimilarity 0 (the authors' zero-including mean):
  ``Mg_include = Mg (n - 1) / n``.
- ``madv``: ``Madv = 1 - mean_c cos(f(p_c), f(adv(p_c)))`` with ``adv(p_c)`` the minimal untargeted
  adversarial example of ``p_c``: L2 DeepFool with overshoot 0.02 (:func:`deepfool`). The attack
  needs the model, so it runs as the metric's *probe* while each interval's model is at hand; the
  metric then reads the features it stored (``adversarial_features``).
"""
from __future__ import annotations

import numpy as np
import torch
import xarray as xr

import toolkit
from toolkit.model import extract_features
from toolkit_plugins.metrics import SELF_PAIRS, unit

OVERSHOOT = 0.02
DEEPFOOL_STEPS = 50


def deepfool(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             overshoot: float = OVERSHOOT, steps: int = DEEPFOOL_STEPS,
             batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """L2 DeepFool (Moosavi-Dezfooli et al. 2016), batched, pixels kept in [0, 1].

    Each image ``x`` with label ``l`` is moved, while the model still predicts ``l`` and for at most
    ``steps`` iterations, by ``x <- clamp(x + (1 + overshoot) r, 0, 1)``, where ``r`` is the
    smallest step onto the nearest linearised boundary,
    ``r = (|f_c - f_l| + 1e-4) / ||w_c - w_l||^2 (w_c - w_l)``, ``c`` minimising
    ``|f_c - f_l| / ||w_c - w_l||`` (``f`` the logits, ``w`` their input gradients). The overshoot
    is applied per step and the image clipped as torchattacks' ``DeepFool`` does. For an affine
    classifier without clipping one step lands exactly past the boundary.

    Returns the adversarial images and the iterations each took.
    """
    out, taken = images.clone(), torch.zeros(len(images), dtype=torch.int64, device=images.device)
    for start in range(0, len(images), batch_size):
        block = slice(start, start + batch_size)
        out[block], taken[block] = _deepfool(model, images[block], labels[block], overshoot, steps)
    return out, taken


def _deepfool(model, images, labels, overshoot, steps):
    x = images.clone()
    taken = torch.zeros(len(x), dtype=torch.int64, device=x.device)
    rows = torch.arange(len(x), device=x.device)
    for _ in range(steps):
        x.requires_grad_(True)
        logits = model(x).float()
        active = logits.argmax(1) == labels
        if not active.any():
            break
        n = logits.shape[1]
        # Input gradients of every logit: one backward per class (n is small; the batch is not).
        grads = torch.stack([torch.autograd.grad(logits[:, c].sum(), x, retain_graph=c < n - 1)[0]
                             for c in range(n)], 1)                       # (N, n, C, H, W)
        x = x.detach()
        with torch.no_grad():
            f = logits.detach() - logits.detach()[rows, labels].unsqueeze(1)  # (N, n)
            w = grads - grads[rows, labels].unsqueeze(1)
            norm = w.flatten(2).norm(dim=2)                                 # (N, n)
            distance = f.abs() / norm.clamp_min(1e-12)
            distance[rows, labels] = float("inf")
            nearest = distance.argmin(1)
            w_c = w[rows, nearest]
            scale = (f[rows, nearest].abs() + 1e-4) / norm[rows, nearest].clamp_min(1e-12) ** 2
            r = scale.view(-1, *([1] * (x.dim() - 1))) * w_c
            moved = (x + (1 + overshoot) * r).clamp(0.0, 1.0)
            x = torch.where(active.view(-1, *([1] * (x.dim() - 1))), moved, x)
            taken += active
    return x.detach(), taken


def adversarial_probe(model: torch.nn.Module, grid: torch.Tensor, records, settings,
                      overshoot: float = OVERSHOOT, steps: int = DEEPFOOL_STEPS, *,
                      rows: range | None = None, prototypes=None) -> dict[str, np.ndarray]:
    """DeepFool on the class prototypes ``P[c, c]`` of a grid (seed, k, j, C, H, W); on a block
    of rows (``rows``, the ``k`` of each row of ``grid``), on the prototypes of those classes."""
    seeds, n = grid.shape[:2]                      # n: the rows of the grid (all n classes when whole)
    rows = range(grid.shape[2]) if rows is None else rows
    device = next(model.parameters()).device
    c = torch.as_tensor(list(rows), dtype=torch.int64)
    classes = grid[:, torch.arange(n), c].flatten(0, 1).to(device)         # (seed * n, C, H, W)
    labels = c.repeat(seeds).to(device)
    with torch.enable_grad():
        adversarial, taken = deepfool(model, classes, labels, overshoot, steps, settings.batch_size)
    with torch.no_grad():
        predicted = torch.cat([model(adversarial[i:i + 256]).argmax(1)
                               for i in range(0, len(adversarial), 256)])
    features = extract_features(model, adversarial, device=device)
    distance = (adversarial - classes).flatten(1).norm(dim=1)
    return {"adversarial_features": features.view(seeds, n, -1).numpy(),
            "adversarial_class": predicted.view(seeds, n).cpu().numpy(),
            "adversarial_distance": distance.view(seeds, n).cpu().numpy().astype(np.float32),
            "adversarial_steps": taken.view(seeds, n).cpu().numpy()}


def _prototype_features(ds: xr.Dataset) -> np.ndarray:
    """(interval, seed, class, feature) features of the class prototypes, the diagonal of the grid."""
    f = ds["features"].transpose("interval", "seed", "k", "j", "feature").values
    c = np.arange(f.shape[2])
    return f[:, :, c, c].astype(np.float64)


def _per_seed(name: str, values: np.ndarray, ds: xr.Dataset, attrs: dict) -> dict[str, xr.DataArray]:
    per_seed = xr.DataArray(values, dims=("interval", "seed"),
                            coords={"interval": ds["interval"], "seed": ds["seed"]},
                            attrs={**attrs, "long_name": attrs["long_name"] + ", per seed"})
    return {f"{name}_seed": per_seed,
            name: per_seed.mean("seed").assign_attrs(
                {**attrs, "long_name": attrs["long_name"] + ", averaged over seeds"})}


def mg(ds: xr.Dataset, *, self_pairs: str = "exclude") -> dict[str, xr.DataArray]:
    """``Mg`` (interval) and ``Mg_seed`` (interval, seed): 1 - mean cosine between the features of
    distinct class prototypes (``self_pairs="include"``: the authors' mean over all n^2 pairs)."""
    check_mg_options(self_pairs=self_pairs)
    f = unit(_prototype_features(ds))
    cos = f @ np.swapaxes(f, -1, -2)                                        # (interval, seed, n, n)
    n = cos.shape[-1]
    dissimilarity = 1.0 - cos
    dissimilarity[..., np.arange(n), np.arange(n)] = 0.0
    pairs = n * (n - 1) if self_pairs == "exclude" else n * n
    value = dissimilarity.sum((-1, -2)) / max(pairs, 1)
    return _per_seed("Mg", value, ds, {
        "long_name": "Mg: 1 - mean cosine between class prototypes' features", "units": "1",
        "self_pairs": self_pairs + "d", "reference": "Dean & Sarkar 2023"})


def madv(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """``Madv`` (interval) and ``Madv_seed`` (interval, seed): 1 - mean cosine between each class
    prototype's features and those of its minimal adversarial example (from the probe)."""
    if "adversarial_features" not in ds:
        raise toolkit.UsageError("madv needs adversarial_features, which its probe writes during "
                                 "analyze; this dataset has none (was madv listed in --metrics?)")
    a = unit(ds["adversarial_features"].transpose("interval", "seed", "class", "feature")
              .values.astype(np.float64))
    f = unit(_prototype_features(ds))
    value = 1.0 - (a * f).sum(-1).mean(-1)
    return _per_seed("Madv", value, ds, {
        "long_name": "Madv: 1 - mean cosine between prototypes and their DeepFool examples",
        "units": "1", "attack": f"L2 DeepFool, overshoot {OVERSHOOT}, at most {DEEPFOOL_STEPS} steps",
        "reference": "Dean & Sarkar 2023"})


def check_mg_options(*, self_pairs: str = "exclude") -> None:
    if self_pairs not in SELF_PAIRS:
        raise toolkit.UsageError(f"mg self_pairs must be one of {', '.join(SELF_PAIRS)}; "
                                 f"got {self_pairs!r}")


# What the probe ``adversarial`` adds: the minimal adversarial example of each class prototype.
ADVERSARIAL = {
    "adversarial_features": toolkit.Variable(("interval", "seed", "class", "feature"), dict(
        long_name="penultimate features of p_c's minimal adversarial example (L2 DeepFool)",
        units="1")),
    "adversarial_class": toolkit.Variable(("interval", "seed", "class"), dict(
        long_name="class the model assigns to p_c's adversarial example")),
    "adversarial_distance": toolkit.Variable(("interval", "seed", "class"), dict(
        long_name="L2 pixel distance from p_c to its adversarial example", units="1")),
    "adversarial_steps": toolkit.Variable(("interval", "seed", "class"), dict(
        long_name="DeepFool iterations for p_c", units="1")),
}


def _per_seed_variables(name: str, long_name: str) -> dict[str, toolkit.Variable]:
    return {name: toolkit.Variable(("interval",), {"long_name": f"{long_name}, averaged over seeds",
                                                   "units": "1"}),
            f"{name}_seed": toolkit.Variable(("interval", "seed"), {
                "long_name": f"{long_name}, per seed", "units": "1"})}


@toolkit.hookimpl
def register_probes(register):
    register("adversarial", toolkit.Probe(adversarial_probe, ADVERSARIAL, blocks=True),
             description="L2 DeepFool (overshoot 0.02) on each class prototype, for madv")


@toolkit.hookimpl
def register_metrics(register):
    register("mg", mg, check_options=check_mg_options,
             variables=_per_seed_variables(
                 "Mg", "Mg: 1 - mean cosine between class prototypes' features"),
             description="Mg (Dean & Sarkar 2023): 1 - mean cosine between class prototypes' features")
    register("madv", madv, probe="adversarial",
             variables=_per_seed_variables(
                 "Madv", "Madv: 1 - mean cosine between prototypes and their DeepFool examples"),
             description="Madv (Dean & Sarkar 2023): 1 - mean cosine between each prototype and its "
                         "L2 DeepFool adversarial example (overshoot 0.02)")


@toolkit.hookimpl
def register_scores(register):
    register("Mg", toolkit.Score.of_variable(
        "Mg", +1, "Dean & Sarkar 2023: prototypes of a better classifier are more dissimilar"))
    register("Madv", toolkit.Score.of_variable(
        "Madv", +1, "Dean & Sarkar 2023: a better classifier's prototypes need a larger feature "
                    "change to flip"))
