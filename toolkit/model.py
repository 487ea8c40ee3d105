"""The wrapper that puts dataset normalisation inside a model, and feature extraction."""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.fx
from torch import nn


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


class BatchNormFolded(nn.Module):
    """An inference view of ``model`` with each BatchNorm that follows a convolution folded into it.

    In eval mode ``bn(conv(x))`` is one affine map per channel after the convolution, so it equals
    a single convolution whose weights are scaled by ``gamma / sqrt(var + eps)`` and whose bias
    absorbs the shift. Folding removes the BatchNorm's forward and backward (about a fifth of an
    input-gradient step of ResNet18 on the CPU) and changes results only by float rounding.

    The view is a :mod:`torch.fx` trace of ``model`` that shares every other module and parameter
    with it; the folded convolutions are its own and :meth:`refresh` recomputes them from the
    model's current weights and statistics (call it whenever those may have changed, e.g. after
    training). Build it with :meth:`of`, which returns ``None`` for a model that cannot be traced
    or has nothing to fold. Use it only while ``model`` is in eval mode.
    """

    def __init__(self, model: nn.Module, traced: torch.fx.GraphModule, pairs: list[tuple[str, str]]):
        super().__init__()
        self.traced = traced
        self._pairs = [(model.get_submodule(c), model.get_submodule(b), traced.get_submodule(c))
                       for c, b in pairs]
        self.refresh()

    @classmethod
    def of(cls, model: nn.Module) -> "BatchNormFolded | None":
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.fx.symbolic_trace(model)
        except Exception:  # control flow on values, unsupported ops: not every model traces
            return None
        modules = dict(traced.named_modules())
        calls: dict[str, int] = {}
        for node in traced.graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        pairs = []
        for node in list(traced.graph.nodes):
            bn = modules.get(node.target) if node.op == "call_module" else None
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not bn.track_running_stats:
                continue
            src = node.args[0] if node.args else None
            conv = modules.get(src.target) if isinstance(src, torch.fx.Node) and src.op == "call_module" else None
            # Fold only a convolution whose sole use is this BatchNorm, each called once.
            if (type(conv) not in (nn.Conv1d, nn.Conv2d, nn.Conv3d) or len(src.users) != 1
                    or calls[src.target] != 1 or calls[node.target] != 1):
                continue
            fused = copy.deepcopy(conv).requires_grad_(False)   # for input gradients only
            if fused.bias is None:
                fused.bias = nn.Parameter(conv.weight.new_zeros(conv.out_channels), requires_grad=False)
            traced.add_submodule(src.target, fused)      # the trace's own copy; the model keeps its
            node.replace_all_uses_with(src)
            traced.graph.erase_node(node)
            pairs.append((src.target, node.target))
        if not pairs:
            return None
        traced.delete_all_unused_submodules()
        traced.recompile()
        return cls(model, traced, pairs)

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the folded convolutions from the model's convolutions and BatchNorms."""
        for conv, bn, fused in self._pairs:
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps) if bn.affine else \
                torch.rsqrt(bn.running_var + bn.eps)
            shift = bn.bias if bn.affine else torch.zeros_like(scale)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
            fused.weight.copy_(conv.weight * scale.view(-1, *[1] * (conv.weight.dim() - 1)))
            fused.bias.copy_((bias - bn.running_mean) * scale + shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.traced(x)
