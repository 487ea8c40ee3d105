"""The update rule, per-image stopping and the work queue of the `prototype` synthesizer."""
import pytest
import torch
from torch import nn

import toolkit
from toolkit.model import frozen
from toolkit.pipeline import synthesize_grid
from toolkit.plugins import get_registry
from toolkit_plugins.synthesis import prototype
from tests.conftest import TinyCNN


class Linear(nn.Module):
    """logits = W x: its input gradient is known in closed form."""

    def __init__(self, weight):
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.fc.weight.data = weight

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_one_step_is_the_normalised_gradient_step_clamped_to_the_pixel_box():
    torch.manual_seed(0)
    w = torch.randn(3, 4)
    model = Linear(w)
    x0 = torch.tensor([[[[0.5, 0.5], [0.01, 0.99]]]])
    settings = toolkit.SynthesisSettings(lr=0.1, loss_threshold=1e-9, fixed_steps=1)
    out = prototype(model, x0, torch.tensor([2]), settings)

    p = torch.softmax(w @ x0.flatten(), 0)
    grad = w.T @ (p - torch.nn.functional.one_hot(torch.tensor(2), 3).float())  # d CE / dx
    want = (x0.flatten() - 0.1 * grad / grad.norm()).clamp(0, 1)
    assert torch.allclose(out.images.flatten(), want, atol=1e-6)
    assert out.steps.tolist() == [1]


def test_each_image_stops_on_its_own_and_records_its_final_state():
    torch.manual_seed(0)
    model = Linear(torch.randn(3, 4) * 3)
    start = torch.rand(6, 1, 2, 2)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    out = prototype(model, start, targets, toolkit.SynthesisSettings(lr=0.05, max_steps=500))
    logits = model(out.images)
    loss = nn.functional.cross_entropy(logits, targets, reduction="none")
    assert torch.allclose(out.loss, loss, atol=1e-5)        # the loss of the image returned
    assert (out.converged == (loss < 0.01)).all()
    assert (out.predicted == logits.argmax(1)).all()
    assert torch.allclose(out.confidence, logits.softmax(1).max(1).values, atol=1e-6)
    assert len(set(out.steps.tolist())) > 1                  # they stopped at different steps
    assert out.images.min() >= 0 and out.images.max() <= 1


def test_images_at_max_steps_stop_unconverged():
    model = Linear(torch.eye(2, 4) * 1e-3)  # too weak to ever reach 99 % confidence
    out = prototype(model, torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0]),
                    toolkit.SynthesisSettings(lr=0.1, max_steps=7))
    assert out.steps.tolist() == [7, 7, 7]
    assert not out.converged.any()


def test_fixed_steps_ignores_the_threshold():
    torch.manual_seed(1)
    model = Linear(torch.randn(3, 4) * 5)
    out = prototype(model, torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0]),
                    toolkit.SynthesisSettings(lr=0.05, fixed_steps=25))
    assert out.steps.tolist() == [25] * 4


def test_zero_gradient_leaves_the_image_in_place_without_nan():
    model = Linear(torch.zeros(2, 4))  # constant logits: the gradient is exactly zero
    start = torch.rand(2, 1, 2, 2)
    out = prototype(model, start, torch.tensor([0, 1]), toolkit.SynthesisSettings(max_steps=3))
    assert torch.equal(out.images, start)
    assert torch.isfinite(out.loss).all()


def test_work_queue_gives_each_image_the_same_result_whatever_the_batch_size():
    torch.manual_seed(0)
    model = TinyCNN(3, 1, 6).eval().requires_grad_(False)
    start = torch.rand(7, 1, 6, 6)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    finished = []
    settings = toolkit.SynthesisSettings(lr=0.2, max_steps=40, batch_size=7)
    whole = prototype(model, start, targets, settings)
    queued = prototype(model, start, targets,
                       toolkit.SynthesisSettings(lr=0.2, max_steps=40, batch_size=2),
                       progress=finished.append)
    assert sum(finished) == 7
    assert torch.equal(whole.steps, queued.steps)
    assert torch.allclose(whole.images, queued.images, atol=1e-5)


def test_grid_holds_prototypes_on_the_diagonal_and_intermediaries_elsewhere(trained_tiny):
    model, data = trained_tiny
    noise = torch.rand(2, 3, 1, 6, 6, generator=torch.Generator().manual_seed(0))  # 2 seeds
    synthesizer = get_registry("synthesizer").get("prototype")
    settings = toolkit.SynthesisSettings(lr=0.3, max_steps=300)
    with frozen(model):
        grid, records = synthesize_grid(model, synthesizer, 3, noise, settings)
        prototypes = prototype(model, noise[1], torch.arange(3), settings)
        assert grid.shape == (2, 3, 3, 1, 6, 6)
        for c in range(3):
            assert torch.allclose(grid[1, c, c], prototypes.images[c], atol=1e-6)
            assert records["steps"][1, c, c] == prototypes.steps[c]
        # each P[k, j] is p_j (of the same seed) pushed toward k
        again = prototype(model, prototypes.images[1:2], torch.tensor([2]), settings)
        assert torch.allclose(grid[1, 2, 1], again.images[0], atol=1e-5)
        predicted = model(grid.flatten(0, 2)).argmax(1).view(2, 3, 3)
    targets = torch.arange(3)[:, None].expand(2, 3, 3)
    assert records["converged"].all()
    assert torch.equal(predicted, targets)
    assert torch.equal(records["predicted"], predicted)


def test_synthesizer_returning_the_wrong_shape_is_a_plugin_error():
    bad = toolkit.SynthesisResult(torch.zeros(2, 1, 2, 2), *(torch.zeros(2),) * 5)
    with pytest.raises(toolkit.PluginError, match="returned images of shape"):
        bad.check(torch.zeros(3, 1, 2, 2), "bad")
