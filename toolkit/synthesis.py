"""What a synthesizer is given and what it returns (the contract of ``register_synthesizers``)."""
from __future__ import annotations

import dataclasses

import torch

from toolkit.config import FALLBACKS, OPTION
from toolkit.errors import PluginError
from toolkit.hardware import check_stage_precision


@dataclasses.dataclass(frozen=True)
class SynthesisSettings:
    """How to optimise images toward their target classes.

    Attributes:
        lr: step length in pixel space (the L2 norm of one update of one image).
        loss_threshold: an image is done once its cross-entropy falls below this.
        max_steps: an image that has taken this many steps stops, converged or not.
        fixed_steps: if set, every image takes exactly this many steps and the threshold only
            decides ``converged`` (the authors' published code runs 250).
        batch_size: how many images are optimised at once (the micro-batch of the work queue).
        precision: ``fp32``, or ``bf16`` to run the model under bfloat16 autocast (loss, stopping
            test and images stay float32).
        compile: run the model through ``torch.compile``.
    """

    # The defaults are the analysis options' (toolkit.config), declared there once.
    lr: float = FALLBACKS["lr"]
    loss_threshold: float = OPTION["loss_threshold"].default
    max_steps: int = FALLBACKS["max_steps"]
    fixed_steps: int | None = OPTION["fixed_steps"].default
    batch_size: int = 128  # what batch_size="auto" chooses for 32x32 images on a CPU
    precision: str = "fp32"  # a resolved precision: analyze resolves auto (toolkit.hardware)
    compile: bool = False  # a resolved choice: analyze resolves auto (toolkit.hardware)

    def __post_init__(self) -> None:
        check_stage_precision("SynthesisSettings", self.precision)
        if not isinstance(self.compile, bool):
            raise ValueError(f"SynthesisSettings.compile must be True or False, not {self.compile!r} "
                             "(analyze resolves auto: toolkit.hardware.resolve_compile)")


@dataclasses.dataclass(frozen=True)
class SynthesisResult:
    """Optimised images and one record per image, all on the CPU.

    Attributes:
        images: float32 ``(N, C, H, W)`` in [0, 1].
        steps: int64 ``(N,)`` updates each image took.
        loss: float32 ``(N,)`` cross-entropy toward its target of each final image.
        converged: bool ``(N,)`` whether that loss is below the threshold.
        predicted: int64 ``(N,)`` the model's class for each final image.
        confidence: float32 ``(N,)`` the softmax probability of the predicted class.
    """

    images: torch.Tensor
    steps: torch.Tensor
    loss: torch.Tensor
    converged: torch.Tensor
    predicted: torch.Tensor
    confidence: torch.Tensor

    def check(self, start: torch.Tensor, name: str) -> "SynthesisResult":
        """Return a CPU copy in the contract's dtypes, or raise ``PluginError`` naming the fault."""
        n = start.shape[0]
        if not isinstance(self.images, torch.Tensor) or tuple(self.images.shape) != tuple(start.shape):
            raise PluginError(f"synthesizer {name!r} returned images of shape "
                              f"{tuple(getattr(self.images, 'shape', ()))}, expected {tuple(start.shape)}")
        records = {}
        for field, dtype in (("steps", torch.int64), ("loss", torch.float32), ("converged", torch.bool),
                             ("predicted", torch.int64), ("confidence", torch.float32)):
            value = getattr(self, field)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (n,):
                raise PluginError(f"synthesizer {name!r} returned {field} that is not a tensor of "
                                  f"shape ({n},)")
            records[field] = value.detach().to("cpu", dtype)
        return SynthesisResult(images=self.images.detach().to("cpu", torch.float32), **records)


def auto_batch_size(device: torch.device | str, image_shape: tuple[int, ...]) -> int:
    """The micro-batch size ``batch_size="auto"`` chooses for images of ``image_shape`` (C, H, W).

    The activations of a convolutional network grow with the pixels per channel, so the size is a
    fixed pixel budget divided by ``H * W``: 128 CIFAR-sized (32x32) images on a CPU, where
    throughput saturates near there (measured on a 2-core x86 machine; larger batches gain little
    and cost memory), and 1024 on a GPU, which needs many more images in flight to fill its cores.
    Clamped to [16, 2048] on a CPU and [64, 8192] on a GPU.
    """
    device = torch.device(device)
    pixels = image_shape[-1] * image_shape[-2]
    if device.type == "cuda":
        return int(min(8192, max(64, 1024 * 1024 // pixels)))
    return int(min(2048, max(16, 128 * 1024 // pixels)))
