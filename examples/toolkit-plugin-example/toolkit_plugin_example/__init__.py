"""An example toolkit plugin that registers one of each kind.

- model ``example-mlp``: a two-layer perceptron behind timm's feature protocol;
- dataset ``example-shapes``: 8x8 grey images of four strokes (rows, columns, two diagonals),
  generated on the fly, so nothing is downloaded;
- synthesizer ``example-signed``: signed-gradient descent on the input (the sign of the gradient
  instead of its normalised value), each image stopping on its own;
- metric ``example-feature-norm``: the mean L2 norm of the prototypes' penultimate features, a new
  variable of the results file (``feature_norm``, declared with its dims and attributes);
- probe ``example-brightness``: the mean pixel of every ``P[k, j]``, measured while the model is at
  hand (the synthesizer ``example-signed`` names it), another new variable (``brightness``);
- figure ``example-feature-norm``: ``feature_norm`` against training, in ``toolkit plot`` and
  ``toolkit report``;
- score ``example-feature-norm``: ``feature_norm`` averaged over seeds, which ``toolkit quality``
  correlates with test accuracy.

None of them touches the toolkit: each is registered through a hook.

The toolkit finds this module through the entry point in ``setup.cfg``::

    [options.entry_points]
    toolkit =
        example = toolkit_plugin_example
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

import toolkit

__version__ = "0.1.0"


# --- model --------------------------------------------------------------------------------------

class MLP(nn.Module):
    """Flatten, one hidden layer, a linear classifier; timm's feature protocol."""

    def __init__(self, num_classes: int, in_chans: int, image_size: int, hidden: int = 32):
        super().__init__()
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size ** 2, hidden),
                                    nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(x)                                     # (N, hidden)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.fc(x)                    # (N, hidden) or (N, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- dataset ------------------------------------------------------------------------------------

SHAPES = ("row", "column", "diagonal", "antidiagonal")


def make_shapes(per_class: int = 40, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` noisy images of each stroke: uint8 ``(N, 1, size, size)`` and int64 labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(SHAPES)).repeat_interleave(per_class)
    images = torch.rand(len(labels), 1, size, size, generator=g) * 0.35
    where = torch.randint(1, size - 1, (len(labels),), generator=g)   # which row/column
    idx = torch.arange(size)
    for n, (label, at) in enumerate(zip(labels.tolist(), where.tolist())):
        stroke = images[n, 0]
        if label == 0:
            stroke[at, :] += 0.65
        elif label == 1:
            stroke[:, at] += 0.65
        elif label == 2:
            stroke[idx, idx] += 0.65
        else:
            stroke[idx, size - 1 - idx] += 0.65
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


def load_shapes(root: Path, download: bool) -> toolkit.ImageDataset:
    """Generated in memory: ``root`` and ``download`` are not needed."""
    train_x, train_y = make_shapes(per_class=40, seed=0)
    test_x, test_y = make_shapes(per_class=20, seed=1)
    return toolkit.ImageDataset("example-shapes", train_x, train_y, test_x, test_y,
                                class_names=SHAPES)   # mean and std computed from train_x


# --- synthesizer --------------------------------------------------------------------------------

def signed_gradient(model: nn.Module, start: torch.Tensor, targets: torch.Tensor,
                    settings: toolkit.SynthesisSettings,
                    progress: Optional[Callable[[int], None]] = None) -> toolkit.SynthesisResult:
    """``x <- clamp(x - lr * sign(g) / sqrt(D), 0, 1)``: a step of L2 length ``lr``, like the
    built-in ``prototype``, but along the gradient's sign. Each image stops once its cross-entropy
    is below ``settings.loss_threshold`` or after ``max_steps`` (exactly ``fixed_steps`` if set)."""
    budget = settings.fixed_steps if settings.fixed_steps is not None else settings.max_steps
    step = settings.lr / math.sqrt(start[0].numel())
    chunks = []
    for first in range(0, len(start), settings.batch_size):
        x = start[first:first + settings.batch_size].detach().clone()
        y = targets[first:first + settings.batch_size]
        steps = torch.zeros(len(x), dtype=torch.int64, device=x.device)
        for _ in range(budget + 1):
            x.requires_grad_(True)
            loss = F.cross_entropy(model(x), y, reduction="none")
            active = steps < budget
            if settings.fixed_steps is None:
                active &= loss.detach() >= settings.loss_threshold
            if not active.any():
                break
            (grad,) = torch.autograd.grad(loss.sum(), x)
            with torch.no_grad():
                x = (x - step * grad.sign() * active.view(-1, 1, 1, 1)).clamp_(0, 1)
            steps += active.long()
        with torch.no_grad():
            logits = model(x.detach()).float()
            loss = F.cross_entropy(logits, y, reduction="none")
            confidence, predicted = logits.softmax(1).max(1)
        chunks.append((x.detach(), steps, loss, predicted, confidence))
        if progress is not None:
            progress(len(x))
    images, steps, loss, predicted, confidence = (torch.cat(parts) for parts in zip(*chunks))
    return toolkit.SynthesisResult(images=images, steps=steps, loss=loss,
                                   converged=loss < settings.loss_threshold,
                                   predicted=predicted, confidence=confidence)


# --- metric -------------------------------------------------------------------------------------

OVER = ("grid", "prototypes")


def feature_norm(ds: xr.Dataset, over: str = "grid") -> dict[str, xr.DataArray]:
    """Mean L2 norm of the penultimate features per (interval, seed), over the whole grid ``P``
    (``over="grid"``) or over the class prototypes ``P[k, k]`` only (``over="prototypes"``)."""
    norms = np.sqrt((ds["features"].astype(np.float64) ** 2).sum("feature"))   # (interval, seed, k, j)
    if over == "prototypes":
        norms = norms.where(norms["k"] == norms["j"])
    what = "class prototypes" if over == "prototypes" else "prototype grid P"
    return {"feature_norm": norms.mean(("k", "j")).assign_attrs(
        long_name=f"mean L2 norm of the penultimate features of the {what}", units="1", over=over)}


def check_feature_norm_options(over: str = "grid") -> None:
    """Called by the toolkit before any training, with the user's options for this metric."""
    if over not in OVER:
        raise toolkit.UsageError(f"example-feature-norm option over must be one of {', '.join(OVER)}; "
                                 f"got {over!r}")


# --- probe --------------------------------------------------------------------------------------

def brightness(model: nn.Module, grid: torch.Tensor, records, settings, *, rows=None,
               prototypes=None) -> dict[str, np.ndarray]:
    """The mean pixel of each image of ``grid`` ``(seed, k, j, C, H, W)``: ``(seed, k, j)``. It
    takes blocks of rows (``rows``, ``prototypes``) as it does whole grids."""
    return {"brightness": grid.mean((3, 4, 5)).numpy()}


VARIABLES = {
    "feature_norm": toolkit.Variable(("interval", "seed"), {
        "long_name": "mean L2 norm of the penultimate features", "units": "1"}),
    "brightness": toolkit.Variable(("interval", "seed", "k", "j"), {
        "long_name": "mean pixel of P[k, j]", "units": "1"}),
}


# --- figure and score ---------------------------------------------------------------------------

def feature_norm_figure(ds: xr.Dataset):
    """``feature_norm`` (averaged over seeds) against the fraction of training completed."""
    from toolkit.plotting import interval_axis, need, new_figure, run_title

    need(ds, ("feature_norm",), "run analyze with --metrics cosine,zscore,example-feature-norm")
    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    ax.plot(ds["interval"].values * 100, ds["feature_norm"].mean("seed").values, marker="o")
    ax.set_ylabel("mean L2 norm of the penultimate features")
    interval_axis(ax, ds)
    fig.suptitle(f"Feature norm over training\n{run_title(ds)}", fontsize=11)
    return fig


def feature_norm_score(ds: xr.Dataset) -> np.ndarray:
    return ds["feature_norm"].mean("seed").values.astype(np.float64)


# --- the hooks ----------------------------------------------------------------------------------

@toolkit.hookimpl
def register_models(register):
    register("example-mlp", MLP, description="two-layer perceptron (example plugin)")


@toolkit.hookimpl
def register_datasets(register):
    register("example-shapes", load_shapes,
             description="8x8 strokes: row, column, diagonal, antidiagonal (generated; example plugin)",
             defaults={"epochs": 6, "train_lr": 0.1, "train_batch_size": 16, "lr": 0.5,
                       "max_steps": 60})


@toolkit.hookimpl
def register_synthesizers(register):
    register("example-signed", signed_gradient, probe="example-brightness",
             description="signed-gradient descent on the input (example plugin)")


@toolkit.hookimpl
def register_metrics(register):
    register("example-feature-norm", feature_norm, check_options=check_feature_norm_options,
             variables={"feature_norm": VARIABLES["feature_norm"]},
             description="mean L2 norm of the penultimate features (example plugin)")


@toolkit.hookimpl
def register_probes(register):
    register("example-brightness", toolkit.Probe(
        brightness, {"brightness": VARIABLES["brightness"]}, blocks=True),
        description="mean pixel of every P[k, j] (example plugin)")


@toolkit.hookimpl
def register_figures(register):
    register("example-feature-norm", toolkit.FigureSpec(
        feature_norm_figure, "Feature norm over training",
        "The mean L2 norm of the penultimate features of the grid P, averaged over seeds, at each "
        "interval. A classifier that separates its classes tends to grow its features.",
        needs=("feature_norm",), optional=True), description="feature_norm over training")


@toolkit.hookimpl
def register_scores(register):
    register("example-feature-norm", toolkit.Score(
        feature_norm_score, ("feature_norm",), 0,
        "no sign claimed: an example of a score a plugin adds"), description="feature_norm")
