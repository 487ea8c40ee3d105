"""The paper's synthesizer: normalised-gradient descent on the input toward a target class.

This module is the one home of the update rule (DESIGN.md 1.3). One step of one image ``x``::

    g = d CE(model(x), target) / dx
    x <- clamp(x - lr * g / ||g||_2, 0, 1)

Each image stops on its own, once its cross-entropy is below ``loss_threshold`` or it has taken
``max_steps`` steps (with ``fixed_steps``: after exactly that many). The images form one work
queue run in micro-batches of ``batch_size``: a finished image leaves its batch at once and the next
waiting image takes its slot, so the few slow images never hold a whole batch hostage.

How the queue keeps the hardware busy (the active-set engine, :class:`_ActiveSet`):

- The micro-batch is a preallocated buffer of ``batch_size`` slots (channels-last). One iteration
  runs the model once on every slot: the forward gives each image's loss (the stopping test) and the
  backward its gradient. Images whose test says "done" are written to the outputs with one
  ``index_copy_`` (slots that finish nothing write to a spare row), the others take their step, and
  finished slots are refilled from the waiting images by a cumulative sum over the finished mask,
  all with tensor operations: no Python work per image and no host synchronisation per step.
- The host learns how many images are still at work once per iteration, from a copy made one
  iteration *earlier* (on CUDA a non-blocking copy to pinned memory, read after the next iteration
  has been queued, so the device never waits for the host). It stops when nothing is left and,
  once no image is waiting any more, shrinks the buffer to the images still at work whenever an
  eighth of its slots have fallen empty, so the tail of the queue does not compute empty slots.
- The only work that does not move an unconverged image: each image's last forward and backward
  (the forward is its final stopping test; the backward comes with the batch and is dropped), and
  empty slots at the tail (under an eighth of the buffer) plus, on CUDA, the one iteration the host
  runs behind. No image is stepped once its test has said "done".
- ``precision="bf16"`` runs the model under autocast; the loss, the stopping test, the gradient
  norm and the images stay float32.
- The model runs with each BatchNorm that follows a convolution folded into it
  (:class:`BatchNormFolded`, exact up to float rounding in eval mode): a ResNet18
  input-gradient step then skips the BatchNorms' forward and backward: 8-9 % more image-steps
  per second on a CPU (`benchmarks/fold.py`).
  Models that :mod:`torch.fx` cannot trace run as they are.

What an image descends and when it has arrived is an :class:`Objective`: cross-entropy toward its
target class below ``loss_threshold`` (:class:`CrossEntropy`, the prototypes) unless a caller such
as the ``boundary`` synthesizer passes another to :func:`optimise`; the step stays the one above.
"""
from __future__ import annotations

import contextlib
import copy
import weakref
from typing import Callable, Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import toolkit
from toolkit.model import PaddingSkippingConv2d

# Below this gradient norm an image is treated as having no gradient (it does not move).
_TINY = 1e-12

# torch.compile wrappers, one per model, so every call on the same model reuses its compiled code.
_COMPILED: "weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module]" = weakref.WeakKeyDictionary()
# Smaller batches (a queue's tail, a short queue) run eagerly: one compiled graph then serves every
# batch of a run. Dynamo specialises a batch of 1, and in fp32 on the CPU the convolution's fake
# kernel guards on ``16 <= batch``, so without this floor each of 1, 2-15 and 16+ compiled anew
# (TORCH_LOGS=recompiles). A run whose batches all stay under it compiles nothing.
COMPILED_MIN_BATCH = 16

# Fold BatchNorms into convolutions for synthesis (switched off only to measure what it buys).
FOLD_BATCHNORM = True
# The convolutions a BatchNorm folds into: those that compute exactly a convolution (a subclass may
# compute something else, such as timm's weight-standardised StdConv2d).
FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, PaddingSkippingConv2d)


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, which also keeps :class:`PaddingSkippingConv2d` whole, as one module call
    that a BatchNorm can fold into."""

    def is_leaf_module(self, module: nn.Module, name: str) -> bool:
        return isinstance(module, PaddingSkippingConv2d) or super().is_leaf_module(module, name)


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
                tracer = _Tracer()
                graph = tracer.trace(model)
                traced = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
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
            if (type(conv) not in FOLDABLE or len(src.users) != 1
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


# The BatchNorm-folded view of each model (None: nothing to fold or not traceable), made once.
_FOLDED: "weakref.WeakKeyDictionary[torch.nn.Module, Optional[BatchNormFolded]]" = weakref.WeakKeyDictionary()


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` (``fp32``: none) on ``device``'s type."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)``, made once per model."""
    if model not in _COMPILED:
        # Shapes change at the tail of the queue; dynamic shapes avoid one compile per size.
        _COMPILED[model] = torch.compile(model, dynamic=True)
    return _COMPILED[model]


def folded(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its BatchNorms folded into its convolutions, from its current weights; the
    model itself when it is in training mode or has nothing foldable."""
    if not FOLD_BATCHNORM or any(m.training for m in model.modules()):
        return model
    if model not in _FOLDED:
        _FOLDED[model] = BatchNormFolded.of(model)
    view = _FOLDED[model]
    if view is None:
        return model
    view.refresh()  # the model may have trained since the last call
    return view


class _Pending:
    """A device count the host reads one iteration late, so that it never stalls the device."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.queue: list = []

    def push(self, value: torch.Tensor) -> None:
        if not self.cuda:
            self.queue.append(value)  # the CPU runs synchronously: nothing to wait for
            return
        host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
        host.copy_(value, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.queue.append((host, event))

    def ready(self) -> bool:
        return len(self.queue) > (1 if self.cuda else 0)

    def pop(self) -> torch.Tensor:
        item = self.queue.pop(0)
        if not self.cuda:
            return item
        host, event = item
        event.synchronize()
        return host


class CrossEntropy:
    """The prototypes' objective: cross-entropy toward the target class, arrived below ``threshold``.

    An objective gives each image's ``loss`` (what it descends) from the logits and its targets (one
    row of ``targets`` per image), and ``arrived``: whether the image passes its stopping test.
    """

    def __init__(self, threshold: float):
        self.threshold = threshold

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, reduction="none")

    def arrived(self, logits: torch.Tensor, loss: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss < self.threshold


class _ActiveSet:
    """The work queue of one call: slot buffers, outputs and the counters the host reads."""

    def __init__(self, start: torch.Tensor, targets: torch.Tensor, settings: toolkit.SynthesisSettings,
                 objective=None):
        n, device = start.shape[0], start.device
        self.objective = objective if objective is not None else CrossEntropy(settings.loss_threshold)
        self.n, self.device = n, device
        self.fixed = settings.fixed_steps is not None
        self.budget = settings.fixed_steps if self.fixed else settings.max_steps
        self.threshold, self.lr = settings.loss_threshold, settings.lr
        self.layout = torch.channels_last if start.dim() == 4 else torch.contiguous_format
        self.start = start.detach()
        # One spare row (index n) receives the writes of slots that finish nothing this step.
        self.targets = torch.cat([targets, targets.new_zeros((1, *targets.shape[1:]))])
        self.images = start.new_empty((n + 1, *start.shape[1:]))
        self.steps = torch.zeros(n + 1, dtype=torch.int64, device=device)
        self.loss = torch.zeros(n + 1, dtype=torch.float32, device=device)
        self.predicted = torch.zeros(n + 1, dtype=torch.int64, device=device)
        self.confidence = torch.zeros(n + 1, dtype=torch.float32, device=device)
        self.arrived = torch.zeros(n + 1, dtype=torch.bool, device=device)

        size = min(settings.batch_size, n)
        self.slot = torch.arange(size, device=device)            # image in each slot; n: empty
        self.x = self._laid_out(self.start[:size].clone(memory_format=self.layout))
        self.taken = torch.zeros(size, dtype=torch.int64, device=device)
        self.waiting = torch.tensor(size, device=device)         # next image to enter
        self.finished = torch.zeros((), dtype=torch.int64, device=device)
        self.computed = 0                                         # slot-steps the model ran

    def iterate(self, model: torch.nn.Module, precision: str) -> None:
        """One forward and backward over every slot, then record, step and refill."""
        x = self.x.requires_grad_(True)
        with autocast(self.device, precision):
            logits = model(x)
        logits = logits.float()
        targets = self.targets[self.slot]
        loss = self.objective.loss(logits, targets)
        # Per-sample losses are independent in eval mode, so the gradient of their sum holds each
        # image's own gradient.
        (grad,) = torch.autograd.grad(loss.sum(), x)
        self.computed += len(self.slot)
        with torch.no_grad():
            x = x.detach()
            filled = self.slot < self.n
            at_budget = self.taken >= self.budget
            arrived = self.objective.arrived(logits, loss, targets)
            done = filled & (at_budget if self.fixed else at_budget | arrived)
            # Record the finished images; other slots write to the spare row n.
            dest = torch.where(done, self.slot, self.n)
            confidence, predicted = logits.softmax(1).max(1)
            self.images.index_copy_(0, dest, x)
            for out, value in ((self.steps, self.taken), (self.loss, loss), (self.arrived, arrived),
                               (self.predicted, predicted), (self.confidence, confidence)):
                out.index_copy_(0, dest, value)
            # Step the images still at work.
            active = filled & ~done
            norm = grad.flatten(1).norm(dim=1).clamp_min(_TINY)
            stepped = (x - self.lr * grad / _expand(norm, x)).clamp_(0.0, 1.0)
            x = torch.where(_expand(active, x), stepped, x)
            # Finished slots take the next waiting images, in slot order.
            entering = self.waiting + torch.cumsum(done, 0) - 1
            refill = done & (entering < self.n)
            entering = torch.where(refill, entering, self.n)
            fresh = self.start[entering.clamp(max=self.n - 1)]
            self.x = self._laid_out(torch.where(_expand(refill, x), fresh, x))
            self.slot = torch.where(refill | active, torch.where(refill, entering, self.slot), self.n)
            self.taken = torch.where(active, self.taken + 1, 0)
            count = done.sum()
            self.waiting = torch.clamp(self.waiting + count, max=self.n)
            self.finished = self.finished + count

    def counters(self) -> torch.Tensor:
        """(images finished so far, images in the slots still at work), on the device."""
        return torch.stack([self.finished, (self.slot < self.n).sum()])

    def shrink(self, size: int) -> None:
        """Keep ``size`` slots, the working ones first (``size`` is at least their number)."""
        order = torch.argsort((self.slot >= self.n).to(torch.int8), stable=True)[:size]
        self.slot, self.taken = self.slot[order], self.taken[order]
        self.x = self._laid_out(self.x[order])

    def _laid_out(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` contiguous in the queue's layout, with that layout's exact strides. A dimension of
        size 1 (one channel) satisfies both layouts with either stride, and compiled code guards on
        strides: a stride that changes between steps would compile the model again."""
        x = x.contiguous(memory_format=self.layout)
        strides = torch.empty(x.shape, device="meta", memory_format=self.layout).stride()
        return x if x.stride() == strides else x.as_strided(x.shape, strides)

    def result(self) -> toolkit.SynthesisResult:
        n = self.n
        return toolkit.SynthesisResult(self.images[:n], self.steps[:n], self.loss[:n], self.arrived[:n],
                                       self.predicted[:n], self.confidence[:n])


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def prototype(model: torch.nn.Module, start: torch.Tensor, targets: torch.Tensor,
              settings: toolkit.SynthesisSettings,
              progress: Optional[Callable[[int], None]] = None) -> toolkit.SynthesisResult:
    """Optimise each image of ``start`` until the model assigns it to its target class."""
    return optimise(model, start, targets, settings, progress)


def optimise(model: torch.nn.Module, start: torch.Tensor, targets: torch.Tensor,
             settings: toolkit.SynthesisSettings, progress: Optional[Callable[[int], None]] = None,
             objective=None) -> toolkit.SynthesisResult:
    """Step each image of ``start`` down ``objective`` (default :class:`CrossEntropy` toward
    ``targets``) until it arrives or runs out of steps; ``converged`` records arrival."""
    n = start.shape[0]
    if n == 0:
        empty = torch.zeros(0, device=start.device)
        return toolkit.SynthesisResult(start.clone(), empty.long(), empty, empty.bool(),
                                       empty.long(), empty)
    work = _ActiveSet(start, targets, settings, objective)
    eager = folded(model)
    fast = compiled(eager) if settings.compile else eager
    pending = _Pending(start.device)
    reported = 0
    while True:
        work.iterate(fast if len(work.slot) >= COMPILED_MIN_BATCH else eager, settings.precision)
        pending.push(work.counters())
        if not pending.ready():
            continue
        finished, working = (int(v) for v in pending.pop().tolist())
        if progress is not None and finished > reported:
            progress(finished - reported)
            reported = finished
        if finished == n:
            break
        slots = len(work.slot)
        # Once nobody waits, drop empty slots when an eighth of the buffer is empty. On CUDA the
        # count is an iteration old, so it can only be too high: nothing working is dropped.
        if n - finished == working < slots - max(1, slots // 8) + 1:
            work.shrink(max(working, 1))
            pending.queue.clear()  # counts of the old buffer; the next iteration brings new ones
    return work.result()


@toolkit.hookimpl
def register_synthesizers(register):
    register("prototype", prototype,
             description="normalised-gradient descent on the input, each image stopping at "
                         "CE < loss_threshold (the poster's method)")
