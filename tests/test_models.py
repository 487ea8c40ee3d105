"""Built-in models follow timm's feature protocol, with the CIFAR stem on small images."""
import pytest
import torch

from toolkit.model import NormalizedClassifier, extract_features
from toolkit_plugins.synthesis import BatchNormFolded
from toolkit.plugins import get_registry


@pytest.mark.parametrize("name", ["resnet18", "resnet18-tv"])
@pytest.mark.parametrize("channels, size", [(1, 8), (3, 32)])
def test_resnet18_protocol_and_shapes(name, channels, size):
    torch.manual_seed(0)
    model = get_registry("model").get(name).obj(num_classes=7, in_chans=channels, image_size=size)
    x = torch.rand(2, channels, size, size)
    maps = model.forward_features(x)
    assert maps.shape == (2, 512, size // 8, size // 8)  # CIFAR stem: only the 3 stride-2 stages
    assert model.forward_head(maps, pre_logits=True).shape == (2, 512)
    assert model.forward_head(maps).shape == (2, 7)
    assert torch.allclose(model(x), model.forward_head(maps))


def test_small_images_get_the_cifar_stem():
    model = get_registry("model").get("resnet18").obj(num_classes=10, in_chans=3, image_size=32)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    big = get_registry("model").get("resnet18").obj(num_classes=10, in_chans=3, image_size=224)
    assert big.conv1.kernel_size == (7, 7)


def test_normalisation_lives_inside_the_wrapper():
    torch.manual_seed(0)
    net = get_registry("model").get("resnet18").obj(num_classes=3, in_chans=1, image_size=8).eval()
    wrapped = NormalizedClassifier(net, mean=[0.25], std=[0.5]).eval()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), net((x - 0.25) / 0.5), atol=1e-6)
        want = net.forward_head(net.forward_features((x - 0.25) / 0.5), pre_logits=True)
    assert torch.allclose(extract_features(wrapped, x, batch_size=3), want, atol=1e-6)
    assert set(wrapped.state_dict()) >= {"mean", "std", "model.fc.weight"}


def test_models_without_the_feature_protocol_are_refused():
    with pytest.raises(TypeError, match="timm's feature protocol"):
        NormalizedClassifier(torch.nn.Linear(2, 2), [0.5], [0.5])


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
