"""Built-in models: ResNet18 from timm and from torchvision, and any timm architecture.

Every factory builds a randomly initialised network (nothing is downloaded) that follows timm's
feature protocol. Small images (CIFAR's 32x32, digits' 8x8) get the CIFAR stem: a 3x3 stride-1
convolution and no max-pool, so the feature maps are not shrunk to nothing before the first block.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

import toolkit

# Up to this side length an image counts as small and gets the CIFAR stem.
SMALL_IMAGE = 64


def _cifar_stem(model: nn.Module, in_chans: int) -> None:
    out_chans = model.conv1.out_channels
    model.conv1 = nn.Conv2d(in_chans, out_chans, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()


def timm_resnet(arch: str) -> Callable[[int, int, int], nn.Module]:
    """A factory for timm's ResNet ``arch`` with the CIFAR stem on small images."""

    def factory(num_classes: int, in_chans: int, image_size: int) -> nn.Module:
        import timm

        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
        if image_size <= SMALL_IMAGE:
            _cifar_stem(model, in_chans)
        return model

    factory.__doc__ = f"timm {arch}, CIFAR stem (3x3 stride 1, no max-pool) for images <= {SMALL_IMAGE}px."
    return factory


def timm_any(arch: str) -> Callable[[int, int, int], nn.Module]:
    """A factory for any timm architecture, built as timm builds it (its own stem)."""
    import timm

    if not timm.is_model(arch):
        raise toolkit.UsageError(f"timm has no architecture {arch!r}; timm.list_models() lists them")

    def factory(num_classes: int, in_chans: int, image_size: int) -> nn.Module:
        kwargs = dict(pretrained=False, num_classes=num_classes, in_chans=in_chans)
        try:  # transformers need the image size; most convolutional nets take any size and no such argument
            return timm.create_model(arch, img_size=image_size, **kwargs)
        except TypeError:
            return timm.create_model(arch, **kwargs)

    return factory


class TorchvisionResNet(nn.Module):
    """torchvision's ResNet behind timm's feature protocol."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.net.avgpool(x), 1)
        return x if pre_logits else self.net.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def torchvision_resnet18(num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """torchvision resnet18, CIFAR stem on small images, wrapped to timm's protocol."""
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if image_size <= SMALL_IMAGE:
        _cifar_stem(net, in_chans)
    elif in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return TorchvisionResNet(net)


@toolkit.hookimpl
def register_models(register):
    register("resnet18", timm_resnet("resnet18"),
             description="timm ResNet18; CIFAR stem (3x3 stride 1, no max-pool) for small images")
    register("resnet18-tv", torchvision_resnet18,
             description="torchvision ResNet18 with the same stem, behind timm's feature protocol")
    register("timm:", timm_any, prefix=True,
             description="any timm architecture by name, e.g. timm:resnet34 (timm's own stem)")
