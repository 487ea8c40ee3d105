"""Mg and Madv (Dean & Sarkar 2023) on hand-checked cases, and the DeepFool behind Madv."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import toolkit
from toolkit.results import dataset_from_features
from toolkit_plugins.scores import deepfool, madv, mg

# Prototype features of 3 classes (the diagonal of the grid); cosines: (0, 1) -> 0, (0, 2) and
# (1, 2) -> 1/sqrt(2).
PROTOTYPES = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def grid_dataset(prototypes=PROTOTYPES):
    n = len(prototypes)
    features = np.random.default_rng(0).random((1, 1, n, n, prototypes.shape[1]))
    features[0, 0, np.arange(n), np.arange(n)] = prototypes  # off-diagonal cells must not matter
    return dataset_from_features(features[:, :, :, :, :]).isel(interval=[0])


def test_mg_by_hand():
    ds = grid_dataset()
    mean_cos = 4 / math.sqrt(2) / 6          # six ordered pairs, four of them at 1/sqrt(2)
    assert mg(ds)["Mg"].item() == pytest.approx(1 - mean_cos)
    # the authors' zero-including mean: nine pairs, three of them self-pairs at dissimilarity 0
    assert mg(ds, self_pairs="include")["Mg"].item() == pytest.approx((1 - mean_cos) * 6 / 9)


def test_mg_averages_seeds_and_refuses_bad_options():
    features = np.random.default_rng(1).random((2, 3, 4, 4, 5))
    out = mg(dataset_from_features(features))
    assert out["Mg_seed"].dims == ("interval", "seed")
    np.testing.assert_allclose(out["Mg"].values, out["Mg_seed"].values.mean(1))
    with pytest.raises(toolkit.UsageError, match="mg self_pairs must be one of exclude, include"):
        mg(dataset_from_features(features), self_pairs="all")


def test_madv_by_hand():
    ds = grid_dataset()
    adversarial = np.array([[0.0, 1.0], [0.0, 2.0], [1.0, 0.0]])   # cosines 0, 1, 1/sqrt(2)
    ds["adversarial_features"] = (("interval", "seed", "class", "feature"), adversarial[None, None])
    expected = 1 - (0 + 1 + 1 / math.sqrt(2)) / 3
    assert madv(ds)["Madv"].item() == pytest.approx(expected)


def test_madv_without_its_probe_says_so():
    with pytest.raises(toolkit.UsageError, match="madv needs adversarial_features"):
        madv(grid_dataset())


class Affine(nn.Module):
    def __init__(self, weight, bias):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x):
        return x.flatten(1) @ self.weight.T + self.bias


def test_deepfool_finds_the_nearest_boundary_of_an_affine_classifier_in_one_step():
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(4, 6, generator=g), torch.randn(4, generator=g)
    model = Affine(weight, bias)
    x = 0.5 + 0.01 * torch.randn(5, 1, 2, 3, generator=g)   # far from the clipping at 0 and 1
    labels = model(x).argmax(1)
    adversarial, steps = deepfool(model, x, labels)
    assert (steps == 1).all()
    assert (model(adversarial).argmax(1) != labels).all()
    # The exact minimal L2 distance to the nearest linear boundary, times (1 + overshoot).
    f = model(x) - model(x).gather(1, labels[:, None])
    w = weight[None] - weight[labels][:, None]
    distance = (f.abs() + 1e-4) / w.norm(dim=2)
    distance[torch.arange(5), labels] = float("inf")
    moved = (adversarial - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(moved, 1.02 * distance.min(1).values)


def test_deepfool_leaves_misclassified_images_alone():
    model = Affine(torch.eye(2, 4), torch.zeros(2))
    x = torch.full((1, 1, 2, 2), 0.5)
    x[0, 0, 0, 1] = 0.9                                        # logit 1 larger
    adversarial, steps = deepfool(model, x, torch.tensor([0]))
    assert steps.item() == 0 and torch.equal(adversarial, x)


@pytest.mark.parametrize("returned, message", [
    ({}, "missing adversarial_class"),
    ({"adversarial_class": np.zeros((2, 3)), "extra": np.zeros(2)}, "unexpected extra"),
    ({"adversarial_class": np.zeros((2,))}, "returned adversarial_class with 1 dims; expected 2"),
])
def test_a_probe_that_breaks_its_contract_is_named(returned, message):
    from toolkit.probes import run_probes
    from toolkit.plugins import Registration

    registration = Registration("probe", "m", toolkit.Probe(
        lambda *args: returned,
        {"adversarial_class": toolkit.Variable(("interval", "seed", "class"))}), "p", {})
    with pytest.raises(toolkit.PluginError, match=message):
        run_probes([registration], None, torch.zeros(2, 3, 3, 1, 2, 2), {}, None)
