"""The paper's synthesizer: normalised-gradient descent on the input toward a target class.

This module is the one home of the update rule (DESIGN.md 1.3). One step of one image ``x``::

    g = d CE(model(x), target) / dx
    x <- clamp(x - lr * g / ||g||_2, 0, 1)

Each image stops on its own, once its cross-entropy is below ``loss_threshold`` or it has taken
``max_steps`` steps (with ``fixed_steps``: after exactly that many). The images form one work
queue run in micro-batches of ``batch_size``: a finished image leaves its batch at once and the next
waiting image takes its slot, so the few slow images never hold a whole batch hostage.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

import toolkit

# Below this gradient norm an image is treated as having no gradient (it does not move).
_TINY = 1e-12


def prototype(model: torch.nn.Module, start: torch.Tensor, targets: torch.Tensor,
              settings: toolkit.SynthesisSettings,
              progress: Optional[Callable[[int], None]] = None) -> toolkit.SynthesisResult:
    """Optimise each image of ``start`` until the model assigns it to its target class."""
    n, device = start.shape[0], start.device
    budget = settings.fixed_steps if settings.fixed_steps is not None else settings.max_steps
    threshold = settings.loss_threshold
    out = start.detach().clone()
    steps = torch.zeros(n, dtype=torch.int64, device=device)
    loss_out = torch.zeros(n, dtype=torch.float32, device=device)
    predicted = torch.zeros(n, dtype=torch.int64, device=device)
    confidence = torch.zeros(n, dtype=torch.float32, device=device)

    slots = torch.empty(0, dtype=torch.int64, device=device)      # which image each slot holds
    x = start.new_empty((0, *start.shape[1:]))                      # the images in the slots
    taken = torch.empty(0, dtype=torch.int64, device=device)       # steps each slot has taken
    waiting = 0                                                     # next image to enter
    while True:
        room = settings.batch_size - len(slots)
        if room > 0 and waiting < n:
            entering = torch.arange(waiting, min(n, waiting + room), device=device)
            waiting += len(entering)
            slots = torch.cat([slots, entering])
            x = torch.cat([x, start[entering].detach()])
            taken = torch.cat([taken, torch.zeros_like(entering)])
        if len(slots) == 0:
            break

        x.requires_grad_(True)
        logits = model(x).float()
        loss = F.cross_entropy(logits, targets[slots], reduction="none")
        with torch.no_grad():
            at_budget = taken >= budget
            done = at_budget if settings.fixed_steps is not None else at_budget | (loss < threshold)
            if done.any():
                finished = slots[done]
                out[finished] = x[done]
                steps[finished] = taken[done]
                loss_out[finished] = loss[done]
                confidence[finished], predicted[finished] = logits[done].softmax(1).max(1)
                if progress is not None:
                    progress(int(done.sum()))
        active = ~done
        if not active.any():
            slots, x, taken = slots[active], x.detach()[active], taken[active]
            continue
        # Per-sample losses are independent in eval mode, so the gradient of their sum holds each
        # image's own gradient.
        (grad,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            grad = grad[active]
            norm = grad.flatten(1).norm(dim=1).clamp_min(_TINY).view(-1, *([1] * (grad.dim() - 1)))
            x = (x.detach()[active] - settings.lr * grad / norm).clamp_(0.0, 1.0)
        slots, taken = slots[active], taken[active] + 1

    converged = loss_out < threshold
    return toolkit.SynthesisResult(out, steps, loss_out, converged, predicted, confidence)


@toolkit.hookimpl
def register_synthesizers(register):
    register("prototype", prototype,
             description="normalised-gradient descent on the input, each image stopping at "
                         "CE < loss_threshold (the poster's method)")
