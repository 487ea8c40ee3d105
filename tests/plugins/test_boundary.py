"""Boundary prototypes: images on the decision boundary of two classes, checked on the model."""
import torch
from torch import nn

import toolkit
from toolkit_plugins.boundary import bisect, boundary_images, boundary_probe, boundary_test
from toolkit_plugins.synthesis import prototype

SETTINGS = toolkit.SynthesisSettings(lr=0.1, max_steps=200, batch_size=8)


def check_on_boundary(model, images, pairs, tolerance=0.01):
    """Re-run the model: the two largest probabilities are j and k, within ``tolerance``."""
    with torch.no_grad():
        p = model(images).softmax(1)
    top2 = p.topk(2, dim=1).indices.sort(1).values
    assert torch.equal(top2, pairs.sort(1).values)
    gap = (p.gather(1, pairs[:, 1:]) - p.gather(1, pairs[:, :1])).abs()
    assert (gap < tolerance).all()


def test_boundary_images_of_a_trained_model_are_on_the_boundary(trained_tiny):
    model, data = trained_tiny
    n = data.num_classes
    noise = torch.rand((n, 1, 6, 6), generator=torch.Generator().manual_seed(0))
    with toolkit.model.frozen(model):
        protos = prototype(model, noise, torch.arange(n), SETTINGS).images
        j, k = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        j, k = j[j != k], k[j != k]
        moved = prototype(model, protos[j], k, SETTINGS).images
        pairs = torch.stack([j, k], 1)
        found = boundary_images(model, protos[j], moved, pairs, SETTINGS)
    assert found["success"].all()
    check_on_boundary(model, found["images"], pairs)
    assert (found["gap"] < 0.01).all()
    assert (found["images"] >= 0).all() and (found["images"] <= 1).all()


class ThreeRegions(nn.Module):
    """Two pixels (u, v): class 0 for small u, class 1 for large u, and class 2 wins on the
    middle of the line v = 0.5 but loses higher up, so the straight path from class 0 to class 1
    crosses class 2."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 3)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[-10.0, 0.0], [10.0, 0.0], [0.0, -10.0]]))
            self.linear.bias.copy_(torch.tensor([5.0, -5.0, 6.0]))

    def forward(self, x):
        return self.linear(x.flatten(1))


def test_a_third_class_on_the_way_is_recorded_and_stepped_around():
    model = ThreeRegions().eval().requires_grad_(False)
    origin = torch.tensor([[[[0.0, 0.5]]]])            # u = 0: class 0
    end = torch.tensor([[[[1.0, 0.5]]]])               # u = 1: class 1
    pairs = torch.tensor([[0, 1]])
    with torch.no_grad():
        middle = model(bisect(model, origin, end, pairs)).argmax(1)
    assert middle.item() == 2                          # the straight path meets class 2 first
    found = boundary_images(model, origin, end, pairs,
                            toolkit.SynthesisSettings(lr=0.05, max_steps=200, batch_size=4))
    assert found["third_class"].item() and found["steps"].item() > 0
    assert found["success"].item()
    check_on_boundary(model, found["images"], pairs)


def test_a_pair_never_on_the_boundary_is_reported_as_such():
    model = ThreeRegions().eval().requires_grad_(False)
    origin = torch.tensor([[[[0.0, 0.5]]]])
    pairs = torch.tensor([[0, 1]])
    found = boundary_images(model, origin, origin.clone(), pairs,   # no step budget to get there
                            toolkit.SynthesisSettings(lr=0.05, max_steps=1, batch_size=4))
    assert not found["success"].item()
    assert found["gap"].item() >= 0.01 or not boundary_test(model(found["images"]), pairs, 0.01)[2]


def test_the_probe_fills_the_grid_and_keeps_the_prototypes_on_the_diagonal(trained_tiny):
    model, data = trained_tiny
    n = data.num_classes
    noise = torch.rand((2 * n, 1, 6, 6), generator=torch.Generator().manual_seed(1))
    with toolkit.model.frozen(model):
        protos = prototype(model, noise, torch.arange(n).repeat(2), SETTINGS).images.view(2, n, 1, 6, 6)
        grid = protos[:, None].repeat(1, n, 1, 1, 1, 1)       # (seed, k, j): P[k, j] = p_j for now
        s, k, j = torch.meshgrid(torch.arange(2), torch.arange(n), torch.arange(n), indexing="ij")
        off = k != j
        grid[off] = prototype(model, grid[off], k[off], SETTINGS).images
        out = boundary_probe(model, grid, {}, SETTINGS)
    assert out["B"].shape == (2, n, n, 1, 6, 6) and out["B_features"].shape[:3] == (2, n, n)
    diagonal = torch.arange(n)
    assert torch.equal(torch.from_numpy(out["B"])[:, diagonal, diagonal], protos)
    assert not out["boundary_success"][:, diagonal, diagonal].any()
    assert out["boundary_success"][off.numpy()].all()
    B = torch.from_numpy(out["B"])[off]
    check_on_boundary(model, B, torch.stack([j[off], k[off]], 1))
