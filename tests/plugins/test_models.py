"""Built-in models follow timm's feature protocol, with the CIFAR stem on small images."""
import pytest
import torch

from toolkit.model import NormalizedClassifier, extract_features
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
