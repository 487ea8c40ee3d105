"""Shared fixtures: a throwaway plugin with a tiny model and dataset, registered per test."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import xarray as xr
from torch import nn

import toolkit
from toolkit.plugins import get_plugin_manager


class TinyCNN(nn.Module):
    """A two-layer CNN that follows timm's feature protocol; trains in a second on the CPU."""

    def __init__(self, num_classes: int, in_chans: int, image_size: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)

    def forward_features(self, x):
        return self.body(x)

    def forward_head(self, x, pre_logits=False):
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def make_tiny_dataset(num_classes: int = 3, per_class: int = 24, size: int = 6) -> toolkit.ImageDataset:
    """Classes are bright bars at different rows, plus noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(0)

    def split(count):
        labels = torch.arange(num_classes).repeat_interleave(count)
        images = torch.rand(len(labels), 1, size, size, generator=g) * 0.3
        for index, label in enumerate(labels):
            images[index, 0, (label * size) // num_classes] += 0.7
        return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels

    train_x, train_y = split(per_class)
    test_x, test_y = split(per_class // 2)
    return toolkit.ImageDataset("tiny", train_x, train_y, test_x, test_y,
                                class_names=[f"bar{c}" for c in range(num_classes)])


def gap_metric(ds: xr.Dataset, scale: float = 1.0) -> dict[str, xr.DataArray]:
    """A third-party metric: mean C minus mean R per (interval, seed)."""
    gap = (ds["C"].mean(("k", "j", "i")) - ds["R"].mean(("k", "j", "i"))) * scale
    return {"gap": gap.assign_attrs(long_name="mean C minus mean R")}


class TinyPlugin:
    """Registers a model, a dataset and a metric through the public hooks, like a third party."""

    __name__ = "tiny-test-plugin"

    @toolkit.hookimpl
    def register_models(self, register):
        register("tiny-cnn", TinyCNN, description="two-layer CNN for tests")

    @toolkit.hookimpl
    def register_datasets(self, register):
        register("tiny", lambda root, download: make_tiny_dataset(),
                 description="3 classes of 6x6 bars", defaults={"lr": 0.5, "epochs": 6})

    @toolkit.hookimpl
    def register_metrics(self, register):
        register("gap", gap_metric, description="C mean minus R mean")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run only where a CUDA device exists."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device, and this machine has none "
                                   "(benchmarks/gpu.sh runs these on a GPU machine)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture
def tiny_plugin():
    pm = get_plugin_manager()
    pm.register(TinyPlugin(), name="tiny-test-plugin")
    try:
        yield
    finally:
        pm.unregister(name="tiny-test-plugin")


TINY_RUN = dict(model="tiny-cnn", dataset="tiny", intervals=(0.5, 1.0), seeds=2, epochs=25,
                train_lr=0.1, train_batch_size=16, max_steps=100, batch_size=4)


@pytest.fixture(scope="session")
def trained_tiny():
    """TinyCNN trained on the tiny dataset (about a second), wrapped to take [0, 1] pixels."""
    from toolkit.model import NormalizedClassifier
    from toolkit.training import TrainingSettings, train_through_intervals

    data = make_tiny_dataset()
    torch.manual_seed(0)
    model = NormalizedClassifier(TinyCNN(3, 1, 6), data.mean, data.std)
    stages = list(train_through_intervals(model, data, [1.0], "data",
                                          TrainingSettings(epochs=30, lr=0.1, batch_size=16), 0, "cpu"))
    assert stages[-1].test_accuracy == 1.0
    return model.eval(), data


def load_script(path: Path):
    """A script of ``examples/`` imported as a module (the examples are not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_readme_block(script, folder: Path, summary: dict) -> None:
    """The README of ``folder`` shows, between its results markers, ``script.render(summary)``."""
    block = script.readme_block((folder / "README.md").read_text())
    assert block is not None, "README.md lacks the results markers"
    assert block == script.render(summary).strip()
