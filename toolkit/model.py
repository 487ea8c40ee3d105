"""The wrapper that puts dataset normalisation inside a model, feature extraction, convolutions
that skip the kernel taps reading only padding, and the cost of one synthesis step."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode


class NormalizedClassifier(nn.Module):
    """A classifier that takes pixels in [0, 1] and normalises them by the dataset's mean and std.

    It keeps timm's feature protocol, so ``forward_head(forward_features(x), pre_logits=True)`` is the
    penultimate feature vector of images ``x`` in pixel space. Its ``state_dict`` holds the inner
    model under ``model.`` and the statistics as buffers.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        for method in ("forward_features", "forward_head"):
            if not callable(getattr(model, method, None)):
                raise TypeError(f"{type(model).__name__} lacks {method}(); models must follow timm's "
                                "feature protocol (forward_features, forward_head(x, pre_logits))")
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features((x - self.mean) / self.std)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.model.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate feature vectors ``(N, F)``: the input of the final classifier layer."""
        return self.forward_head(self.forward_features(x), pre_logits=True).flatten(1)


@torch.no_grad()
def extract_features(model: NormalizedClassifier, images: torch.Tensor, batch_size: int = 256,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Penultimate features of ``images`` (pixels in [0, 1]) in eval mode, as float32 on the CPU."""
    was_training = model.training
    model.eval()
    try:
        chunks = [model.features(images[start:start + batch_size].to(device)).float().cpu()
                  for start in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def live_taps(size: int, kernel: int, stride: int, padding: int,
              dilation: int) -> tuple[int, int, int] | None:
    """The taps of one axis of a zero-padded convolution's kernel that read an input pixel for some
    output, on inputs ``size`` long: ``(first, stop, padding)``, where the kernel cut to taps
    ``first:stop`` with that ``padding`` computes the same outputs from the same pixels. ``None``
    when every tap reads a pixel somewhere, or when the live taps cannot be cut out that way.

    On a one-pixel map a 3x3 convolution with padding 1 reads the pixel through its centre tap
    only (``(1, 2, 0)``): it is a 1x1 convolution, and the other eight taps multiply zeros.
    """
    outputs = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    live = []
    for tap in range(kernel):  # output o reads pixel o * stride + offset through this tap
        offset = tap * dilation - padding
        first = max(0, -(offset // stride))  # the first output that reads a pixel at or after 0
        if first < outputs and first * stride + offset < size:
            live.append(tap)
    if not live or len(live) == kernel or live != list(range(live[0], live[-1] + 1)):
        return None
    first, stop = live[0], live[-1] + 1
    cut = padding - first * dilation
    if cut < 0 or (size + 2 * cut - dilation * (stop - first - 1) - 1) // stride + 1 != outputs:
        return None
    return first, stop, cut


class _Taps(torch.autograd.Function):
    """``weight[:, :, rows, cols]``, its gradient padded back with zeros in the gradient's own
    memory layout (slicing's gradient would be contiguous, and a channels-last weight would then copy
    it once more to accumulate it); out of place, with forward mode too, in the form
    ``torch.func``'s transforms accept."""

    generate_vmap_rule = True

    @staticmethod
    def forward(weight: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        return weight[:, :, rows, cols]

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
        weight, ctx.rows, ctx.cols = inputs
        ctx.height, ctx.width = weight.shape[-2:]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return F.pad(grad, (ctx.cols.start, ctx.width - ctx.cols.stop,
                            ctx.rows.start, ctx.height - ctx.rows.stop)), None, None

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor, *_) -> torch.Tensor:  # forward mode: the same cut
        return tangent[:, :, ctx.rows, ctx.cols]


@torch.fx.wrap  # one call in a torch.fx graph: it reads the input's size, which a trace cannot
def conv2d_live_taps(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                     groups: int) -> torch.Tensor:
    """``F.conv2d`` with zero ``padding`` (two ints), computing only the kernel taps that read a
    pixel of ``input`` (:func:`live_taps`): the same outputs and gradients."""
    height, width = input.shape[-2:]
    kernel = weight.shape[-2:]
    rows, cols = (live_taps(int(size), *axis)
                  for size, axis in zip((height, width), zip(kernel, stride, padding, dilation)))
    if rows is None and cols is None:
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    rows = rows or (0, kernel[0], padding[0])
    cols = cols or (0, kernel[1], padding[1])
    return F.conv2d(input, _Taps.apply(weight, slice(*rows[:2]), slice(*cols[:2])), bias, stride,
                    (rows[2], cols[2]), dilation, groups)


class PaddingSkippingConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that leaves out the kernel taps which, at the input's size, read nothing but
    zero padding: the same function of the same parameters (their gradients there are zero either
    way), in fewer operations. Deep layers of small images gain most: ResNet18's last stage sees
    one-pixel maps on 8x8 images, where oneDNN's weight gradient of a 3x3 convolution is slow
    (measured in docs/performance.md, "Where the time goes").

    Under ``torch.jit.trace``, which would record one input size's cut for every size, it computes
    every tap; ``torch.fx`` records :func:`conv2d_live_taps` as one call."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        if torch.jit.is_tracing():
            return super()._conv_forward(input, weight, bias)
        return conv2d_live_taps(input, weight, bias, self.stride, self.padding, self.dilation,
                                self.groups)


def skip_padding_taps(model: nn.Module) -> nn.Module:
    """Make every plain ``nn.Conv2d`` of ``model`` with zero padding a :class:`PaddingSkippingConv2d`,
    in place, and return ``model``. Parameters, buffers and ``state_dict`` stay as they are; only the
    modules' class changes (as ``torch.nn.utils.parametrize`` changes it), and subclasses of
    ``nn.Conv2d``, which may compute something else, are left alone."""
    for module in model.modules():
        if (type(module) is nn.Conv2d and module.padding_mode == "zeros"
                and not isinstance(module.padding, str) and any(module.padding)):
            module.__class__ = PaddingSkippingConv2d
    return model


class frozen:
    """Context manager: the model in ``eval()`` with ``requires_grad`` off, restored on exit."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> nn.Module:
        self._training = self.model.training
        self._grad = [p.requires_grad for p in self.model.parameters()]
        self.model.eval().requires_grad_(False)
        return self.model

    def __exit__(self, *exc) -> None:
        for p, flag in zip(self.model.parameters(), self._grad):
            p.requires_grad_(flag)
        self.model.train(self._training)


def step_flops(model: nn.Module, shape: Sequence[int], device: torch.device | str = "cpu") -> float:
    """FLOPs of one image's synthesis step on ``model``, for images of ``shape`` ``(C, H, W)``: the
    forward pass, a per-image cross-entropy and the backward pass to the input (the weights are
    frozen, so it computes no weight gradients), as PyTorch's FLOP counter counts them (the matrix
    products and convolutions), on ``device``, where the model lies. The model's weights, mode and
    gradients are left as they were."""
    x = torch.zeros(2, *shape, device=device).contiguous(memory_format=torch.channels_last)
    with frozen(model), FlopCounterMode(display=False) as counter:
        x.requires_grad_(True)
        loss = F.cross_entropy(model(x), torch.zeros(2, dtype=torch.int64, device=device),
                               reduction="none")
        loss.sum().backward()
    return counter.get_total_flops() / 2
