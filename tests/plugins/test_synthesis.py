"""The update rule, per-image stopping and the work queue of the `prototype` synthesizer."""
import copy
import dataclasses
import shutil
import weakref

import pytest
import torch
from torch import nn

import toolkit
from toolkit.model import NormalizedClassifier, PaddingSkippingConv2d, frozen, skip_padding_taps
from toolkit.stages.synthesize import synthesize_grid
from toolkit.plugins import get_registry
from toolkit_plugins.synthesis import BatchNormFolded, prototype


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


def full_batch_reference(model, start, targets, settings):
    """The plain way: step the whole batch together, each image until its own test says done.

    Returns the records the engine should give, and every image's loss at every iterate. The model
    runs as the engine runs it, with its BatchNorms folded into the convolutions."""
    from toolkit_plugins.synthesis import folded

    model = folded(model)
    budget = settings.fixed_steps if settings.fixed_steps is not None else settings.max_steps
    x = start.clone()
    n = len(x)
    steps = torch.zeros(n, dtype=torch.int64)
    done = torch.zeros(n, dtype=torch.bool)
    out = {name: torch.zeros(n) for name in ("loss", "predicted", "confidence")}
    images = start.clone()
    history = []
    for t in range(budget + 1):
        x.requires_grad_(True)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, targets, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), x)
        history.append(loss.detach())
        with torch.no_grad():
            stop = ~done & ((t >= budget) | ((loss < settings.loss_threshold)
                                            if settings.fixed_steps is None else False))
            images[stop], steps[stop] = x[stop], t
            out["loss"][stop] = loss[stop]
            confidence, predicted = logits.softmax(1).max(1)
            out["confidence"][stop], out["predicted"][stop] = confidence[stop], predicted[stop].float()
            done |= stop
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            x = torch.where(done.view(-1, 1, 1, 1), x, (x - settings.lr * grad / norm).clamp(0, 1))
    return images, steps, out, torch.stack(history)


class RowCounter(nn.Module):
    """Counts the image-rows the model is run on."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += len(x)
        return self.model(x)


@pytest.fixture
def tiny_problem(trained_tiny):
    """A trained model and 11 images that stop after 1 to 40 steps (two at the step budget)."""
    model, _ = trained_tiny
    torch.manual_seed(0)
    start = torch.rand(11, 1, 6, 6)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])
    with frozen(model):
        yield model, start, targets


@pytest.mark.parametrize("fixed", [None, 12])
def test_active_set_gives_the_images_and_records_of_plain_full_batch_stepping(tiny_problem, fixed):
    model, start, targets = tiny_problem
    settings = toolkit.SynthesisSettings(lr=0.05, max_steps=40, fixed_steps=fixed, batch_size=4)
    images, steps, records, _ = full_batch_reference(model, start, targets, settings)
    got = prototype(model, start, targets, settings)
    if fixed is None:                                        # images stop at different steps,
        assert len(set(steps.tolist())) > 5 and steps.max() == 40  # some at the budget
    assert torch.equal(got.steps, steps)
    assert torch.allclose(got.images, images, atol=1e-5)
    assert torch.allclose(got.loss, records["loss"], atol=1e-5)
    assert torch.allclose(got.confidence, records["confidence"], atol=1e-5)
    assert torch.equal(got.predicted, records["predicted"].long())
    assert torch.equal(got.converged, records["loss"] < settings.loss_threshold)


def test_no_image_is_stepped_after_its_stopping_test_said_done(tiny_problem):
    model, start, targets = tiny_problem
    settings = toolkit.SynthesisSettings(lr=0.05, max_steps=40, batch_size=3)
    _, _, _, history = full_batch_reference(model, start, targets, settings)
    counter = RowCounter(model)
    got = prototype(counter, start, targets, settings)
    below = history < settings.loss_threshold
    for image in range(len(start)):
        first = int(below[:, image].nonzero()[0]) if below[:, image].any() else settings.max_steps
        assert got.steps[image] == first                    # stopped at the first passing test
    # Every image was run exactly steps + 1 times (its steps, then its final test): nothing was
    # computed for an image after it finished, and (below 16 slots) no empty slot was computed.
    assert counter.rows == int((got.steps + 1).sum())


def test_a_compiled_queue_compiles_once_through_its_tail_at_one_channel(trained_tiny, monkeypatch):
    """One graph serves a whole queue: batches under COMPILED_MIN_BATCH (its tail) run eagerly, and
    one-channel images keep one stride (either is contiguous at C = 1, and dynamo guards on it).
    Counted by dynamo's own counting backend, so inductor builds nothing."""
    from torch._dynamo.testing import CompileCounter

    import toolkit_plugins.synthesis as synthesis_plugins

    counter, real = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, **{**kw, "backend": counter}))
    # a wrapper of its own, neither one an earlier test built nor one a later test would reuse
    monkeypatch.setattr(synthesis_plugins, "_COMPILED", weakref.WeakKeyDictionary())
    sizes = []
    iterate = synthesis_plugins._ActiveSet.iterate
    monkeypatch.setattr(synthesis_plugins._ActiveSet, "iterate", lambda self, model, precision: (
        sizes.append(len(self.slot)), iterate(self, model, precision))[1])
    model, _ = trained_tiny
    torch.manual_seed(0)
    start, targets = torch.rand(48, 1, 6, 6), torch.arange(48) % 3
    settings = toolkit.SynthesisSettings(lr=0.05, max_steps=40, batch_size=32, compile=True)
    with frozen(model):
        torch._dynamo.reset()
        got = prototype(model, start, targets, settings)
        assert counter.frame_count == 1
        assert sizes[0] == 32 and 1 in sizes  # the queue's tail shrank to one image
        eager = prototype(model, start, targets, dataclasses.replace(settings, compile=False))
    assert torch.equal(got.steps, eager.steps)  # the counting backend runs the graph eagerly
    torch.testing.assert_close(got.images, eager.images, atol=1e-4, rtol=0)
    torch._dynamo.reset()


@pytest.mark.parametrize("batch_size", [1, 2, 5, 11, 64])
def test_results_do_not_depend_on_the_micro_batch_size(tiny_problem, batch_size):
    model, start, targets = tiny_problem
    reference = prototype(model, start, targets,
                          toolkit.SynthesisSettings(lr=0.05, max_steps=40, batch_size=3))
    finished = []
    got = prototype(model, start, targets,
                    toolkit.SynthesisSettings(lr=0.05, max_steps=40, batch_size=batch_size),
                    progress=finished.append)
    assert sum(finished) == len(start)
    assert torch.equal(got.steps, reference.steps)
    # Convolution kernels pick their summation order by batch size: float32 rounding, amplified
    # by up to 40 normalised steps (a ReLU or the clamp may flip on one pixel), is all that differs.
    diff = (got.images - reference.images).abs()
    assert diff.max() < 1e-3 and diff.mean() < 1e-5, (diff.max(), diff.mean())
    assert torch.allclose(got.loss, reference.loss, atol=1e-4)


def test_tail_of_the_queue_drops_empty_slots(tiny_problem):
    model, start, targets = tiny_problem
    counter = RowCounter(model)
    got = prototype(counter, start.repeat(3, 1, 1, 1), targets.repeat(3),
                    toolkit.SynthesisSettings(lr=0.05, max_steps=40, batch_size=32))
    useful = int((got.steps + 1).sum())
    # At most an eighth of the 32 slots may idle before the buffer shrinks.
    assert useful <= counter.rows <= useful + 4 * int(got.steps.max() + 1)


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_model_gives_the_records_of_the_eager_one(trained_tiny, monkeypatch):
    """``compile=True`` runs the queue through ``torch.compile`` (inductor) from its first batch of
    32 down to 16, eagerly below: same steps, same images up to float rounding, and the compiled
    wrapper is made once per model and reused."""
    from toolkit_plugins import synthesis

    monkeypatch.setattr(synthesis, "_COMPILED", weakref.WeakKeyDictionary())  # built here, by inductor
    model, _ = trained_tiny
    start, targets = torch.rand(48, 1, 6, 6, generator=torch.Generator().manual_seed(0)), torch.arange(48) % 3
    settings = toolkit.SynthesisSettings(lr=0.05, max_steps=40, batch_size=32)
    with frozen(model):
        eager = prototype(model, start, targets, settings)
        got = prototype(model, start, targets, dataclasses.replace(settings, compile=True))
    assert torch.equal(got.steps, eager.steps)
    assert torch.equal(got.predicted, eager.predicted)
    diff = (got.images - eager.images).abs()
    assert diff.max() < 1e-3 and diff.mean() < 1e-5, (diff.max(), diff.mean())
    with frozen(model):
        view = synthesis.folded(model)  # the BatchNorm-folded model is what gets compiled, once
    assert view is not model and list(synthesis._COMPILED) == [view]


def test_bf16_autocast_keeps_the_records_float32_and_converges(trained_tiny):
    model, _ = trained_tiny
    start = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    with frozen(model):
        fp32 = prototype(model, start, targets, toolkit.SynthesisSettings(lr=0.3, max_steps=300))
        bf16 = prototype(model, start, targets,
                         toolkit.SynthesisSettings(lr=0.3, max_steps=300, precision="bf16"))
        final = nn.functional.cross_entropy(model(bf16.images), targets, reduction="none")
    assert bf16.loss.dtype == bf16.images.dtype == torch.float32
    assert bf16.converged.all() and fp32.converged.all()
    assert (final < 0.05).all()          # the fp32 loss of bf16's images is near the threshold too
    assert ((bf16.images >= 0) & (bf16.images <= 1)).all()


def test_empty_input_gives_empty_records():
    model = Linear(torch.randn(3, 4))
    got = prototype(model, torch.rand(0, 1, 2, 2), torch.zeros(0, dtype=torch.int64),
                    toolkit.SynthesisSettings())
    assert got.images.shape == (0, 1, 2, 2) and got.steps.shape == (0,)


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


# --- BatchNormFolded: the inference view the synthesis engine runs (moved from toolkit.model) ---

def _randomise_batchnorms(model):
    """Give every BatchNorm statistics and an affine map far from the identity."""
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for tensor, low, high in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 2.0),
                                      (m.weight.data, 0.5, 1.5), (m.bias.data, -0.2, 0.2)):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model


def _input_gradient(model, x, targets):
    x = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x), targets, reduction="none")
    return loss, torch.autograd.grad(loss.sum(), x)[0]


@pytest.mark.slow
def test_folded_batchnorms_give_the_models_losses_and_input_gradients():
    net = get_registry("model").get("resnet18").obj(10, 3, 32)
    model = _randomise_batchnorms(NormalizedClassifier(net, [0.5] * 3, [0.25] * 3)).eval()
    # In float64, so that rounding cannot flip a ReLU and the comparison is of the algebra alone.
    model.requires_grad_(False).double()
    folded = BatchNormFolded.of(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 20  # model untouched
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    targets = torch.arange(4)
    (loss, grad), (loss_f, grad_f) = _input_gradient(model, x, targets), _input_gradient(folded, x, targets)
    assert torch.allclose(loss_f, loss, rtol=1e-10, atol=1e-12)
    assert torch.allclose(grad_f, grad, rtol=1e-8, atol=1e-12)

    # Training changes the model; refresh() brings the folded convolutions up to date.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.mul_(3.0)
    with torch.no_grad():
        assert not torch.allclose(folded(x), model(x), atol=1e-3)
        folded.refresh()
        assert torch.allclose(folded(x), model(x), rtol=1e-10, atol=1e-12)


def test_padding_skipping_convolutions_fold_as_the_models_own_do():
    # The study's models skip kernel taps that read only padding (toolkit.model); on 8x8 images
    # their last stage cuts its kernels, and the folded view must fold and cut them the same.
    net = get_registry("model").get("resnet18").obj(10, 1, 8)
    model = _randomise_batchnorms(NormalizedClassifier(net, [0.5], [0.25])).eval()
    model.requires_grad_(False).double()
    skipping = skip_padding_taps(copy.deepcopy(model))
    folded = BatchNormFolded.of(skipping)
    assert folded is not None and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(type(m) is PaddingSkippingConv2d for m in folded.modules()) == 17
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (loss, grad), (loss_f, grad_f) = (_input_gradient(m, x, torch.arange(4)) for m in (model, folded))
    assert torch.allclose(loss_f, loss, rtol=1e-10, atol=1e-12)
    assert torch.allclose(grad_f, grad, rtol=1e-8, atol=1e-12)


def test_models_without_foldable_batchnorms_are_not_folded():
    class Untraceable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)

        def forward(self, x):
            if x.sum() > 0:  # control flow on values: torch.fx cannot trace it
                x = -x
            return self.bn(self.conv(x)).mean((2, 3))

    assert BatchNormFolded.of(Untraceable()) is None
    no_norm = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
    assert BatchNormFolded.of(no_norm) is None
    # A convolution whose output is also used elsewhere keeps its BatchNorm.
    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    assert BatchNormFolded.of(Shared()) is None


def test_synthesis_runs_the_folded_model_only_in_eval_mode():
    from toolkit_plugins import synthesis

    net = get_registry("model").get("resnet18").obj(10, 1, 8)
    model = NormalizedClassifier(net, [0.5], [0.25])
    assert synthesis.folded(model.train()) is model            # BatchNorm on batch statistics
    view = synthesis.folded(model.eval())
    assert isinstance(view, BatchNormFolded) and synthesis.folded(model) is view  # made once
