"""The wrapper that puts dataset normalisation inside a model, feature extraction, convolutions
that skip the kernel taps reading only padding (and, frozen, on the smallest maps, are one matrix
product), and the cost of one synthesis step."""
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


def _outputs(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """How many outputs a convolution's axis gives on inputs ``size`` long."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def live_taps(size: int, kernel: int, stride: int, padding: int,
              dilation: int) -> tuple[int, int, int] | None:
    """The taps of one axis of a zero-padded convolution's kernel that read an input pixel for some
    output, on inputs ``size`` long: ``(first, stop, padding)``, where the kernel cut to taps
    ``first:stop`` with that ``padding`` computes the same outputs from the same pixels. ``None``
    when every tap reads a pixel somewhere, or when the live taps cannot be cut out that way.

    On a one-pixel map a 3x3 convolution with padding 1 reads the pixel through its centre tap
    only (``(1, 2, 0)``): it is a 1x1 convolution, and the other eight taps multiply zeros.
    """
    outputs = _outputs(size, kernel, stride, padding, dilation)
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
    if cut < 0 or _outputs(size, stop - first, stride, cut, dilation) != outputs:
        return None
    return first, stop, cut


def whole_map_taps(size: int, kernel: int, stride: int, padding: int,
                   dilation: int) -> tuple[tuple[int, ...], ...] | None:
    """Along one axis of a zero-padded convolution on inputs ``size`` long, the tap through which
    each output reads each pixel, ``taps[pixel][output]``, when every output's window covers every
    pixel; ``None`` otherwise.

    Then each output is a weighted sum of the whole map, and the convolution one matrix product
    (:func:`conv2d_live_taps`). A 3x3 convolution with padding 1 covers maps of one and two pixels:
    on two, output 0 reads them through taps 1 and 2, output 1 through taps 0 and 1.
    """
    outputs = _outputs(size, kernel, stride, padding, dilation)
    if size > dilation * (kernel - 1) + 1 or outputs < 1:  # wider than one output's window
        return None
    taps = [[None] * outputs for _ in range(size)]
    for output in range(outputs):
        for tap in range(kernel):
            pixel = output * stride - padding + tap * dilation
            if 0 <= pixel < size:
                taps[pixel][output] = tap
    if any(tap is None for row in taps for tap in row):
        return None
    return tuple(map(tuple, taps))


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
    pixel of ``input`` (:func:`live_taps`): the same outputs and gradients.

    On the CPU, where ``weight`` is frozen (``requires_grad`` off: synthesis and feature
    extraction run the model under :class:`frozen`) and every output reads the whole input map
    (:func:`whole_map_taps`), it is one matrix product of the images' pixels with the taps gathered
    into a ``(H * W * C_in) x (H' * W' * C_out)`` matrix: no product with padding at all, and the
    batch, not the map's width, as the long side of the product. On 8x8 images that is ResNet18's
    last stage and the three 3x3 convolutions on 2x2 maps before it, where oneDNN, which blocks its
    work over the output's width, reuses each weight for one or two pixels: the demo's synthesis
    took 0.74-0.88x the time (docs/performance.md, "Whole-map windows"). Training, which needs the
    weights' gradient at batches of tens, ran slower that way and keeps the convolutions, so
    trained weights are what they were. GPUs keep them too until measured: cuDNN's convolutions
    may run in TF32 where a matrix product runs in full fp32.
    """
    kernel = weight.shape[-2:]
    # (size, kernel, stride, padding, dilation) of the rows and of the columns
    axes = [(int(size), *axis) for size, axis in zip(input.shape[-2:],
                                                      zip(kernel, stride, padding, dilation))]
    if groups == 1 and not weight.requires_grad and input.dim() == 4 and input.device.type == "cpu":
        rows, cols = (whole_map_taps(*axis) for axis in axes)
        if rows is not None and cols is not None:
            return _whole_map_product(input, weight, bias, rows, cols)
    rows, cols = (live_taps(*axis) for axis in axes)
    if rows is None and cols is None:
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    rows = rows or (0, kernel[0], padding[0])
    cols = cols or (0, kernel[1], padding[1])
    return F.conv2d(input, _Taps.apply(weight, slice(*rows[:2]), slice(*cols[:2])), bias, stride,
                    (rows[2], cols[2]), dilation, groups)


def _whole_map_product(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       rows: tuple[tuple[int, ...], ...],
                       cols: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """The convolution of a batch whose outputs each read the whole map through the taps
    ``rows[y][y']`` and ``cols[x][x']`` (:func:`whole_map_taps`), as one matrix product; in the
    memory layout ``F.conv2d`` gives (channels-last where the input or the weight is)."""
    images, channels, height, width = input.shape
    out_height, out_width = len(rows[0]), len(cols[0])
    # The matrix transposed: rows (y', x', c_out), columns (y, x, c_in) as the pixels lie
    # channels-last; each block one tap, weight[:, :, i, j], copied once into place.
    blocks = [torch.cat([weight[:, :, rows[y][out_y], cols[x][out_x]]
                         for y in range(height) for x in range(width)], dim=1)
              for out_y in range(out_height) for out_x in range(out_width)]
    matrix = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
    pixels = input.permute(0, 2, 3, 1).reshape(images, height * width * channels)
    out = (pixels @ matrix.t() if bias is None
           else torch.addmm(bias.repeat(out_height * out_width), pixels, matrix.t()))
    out = out.view(images, out_height, out_width, len(weight)).permute(0, 3, 1, 2)
    channels_last = any(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
                        for t in (input, weight))
    return out if channels_last else out.contiguous()


class PaddingSkippingConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that leaves out the kernel taps which, at the input's size, read nothing but
    zero padding: the same function of the same parameters (their gradients there are zero either
    way), in fewer operations. Deep layers of small images gain most: ResNet18's last stage sees
    one-pixel maps on 8x8 images, where oneDNN's weight gradient of a 3x3 convolution is slow
    (measured in docs/performance.md, "Where the time goes"). With frozen weights, on maps so small
    that every output reads all of them, it is one matrix product (:func:`conv2d_live_taps`).

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
