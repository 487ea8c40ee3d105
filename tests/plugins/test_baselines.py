"""The model-zoo baselines that need the model: noise confidence, weight norm, WeightWatcher alpha."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from conftest import TINY_RUN
from toolkit.plugins import get_registry
from toolkit.synthesis import SynthesisSettings
from toolkit_plugins import baselines

GRID = torch.zeros(2, 3, 3, 1, 6, 6)  # (seed, k, j, C, H, W): the probes only read its shape


def settings():
    return SynthesisSettings(batch_size=50)


def test_noise_confidence_is_the_mean_top_probability_on_seeded_noise(trained_tiny):
    model, _ = trained_tiny
    out = baselines.noise_probe(model, GRID, {}, settings())["noise_confidence_seed"]
    noise = torch.rand((baselines.NOISE_IMAGES, 1, 6, 6),
                       generator=torch.Generator().manual_seed(baselines.NOISE_SEED + 1))
    with torch.no_grad():
        expected = model(noise).softmax(1).max(1).values.mean().item()
    assert out.shape == (2,) and out[1] == pytest.approx(expected, rel=1e-6)
    assert 1 / 3 <= out.min() <= out.max() <= 1 and out[0] != out[1]   # one draw per seed


def test_weight_norm_is_the_l2_norm_of_every_parameter(trained_tiny):
    model, _ = trained_tiny
    expected = np.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in model.parameters()))
    out = baselines.weight_norm_probe(model, GRID, {}, settings())["weight_norm_seed"]
    np.testing.assert_allclose(out, [expected, expected], rtol=1e-12)


def _mlp(heavy: bool) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(200, 300), nn.ReLU(), nn.Linear(300, 200))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            sample = (torch.distributions.StudentT(1.5).sample(layer.weight.shape) if heavy
                      else torch.randn(layer.weight.shape))
            layer.weight.copy_(sample / layer.weight.shape[1] ** 0.5)
    return model


def test_ww_alpha_is_lower_for_heavy_tailed_layers():
    pytest.importorskip("weightwatcher")
    gaussian, heavy = baselines.ww_alpha(_mlp(False)), baselines.ww_alpha(_mlp(True))
    assert gaussian > 4 and 1 < heavy < 3          # random-like bulk against a power-law tail


def test_metrics_average_their_probe_over_seeds_and_are_scores():
    ds = xr.Dataset({"noise_confidence_seed": (("interval", "seed"), [[0.5, 0.7], [0.2, 0.4]])},
                    coords={"interval": [0.5, 1.0], "seed": [0, 1]})
    out = get_registry("metric").get("noise_confidence").obj(ds)["noise_confidence"]
    np.testing.assert_allclose(out.values, [0.6, 0.3])
    assert out.attrs["units"] == "1" and "uniform-noise" in out.attrs["long_name"]
    scores = get_registry("score")
    assert scores.get("noise_confidence").obj.expected == -1
    assert scores.get("ww_alpha").obj.expected == -1 and scores.get("weight_norm").obj.expected == 0
    assert scores.get("unconverged_fraction").obj.expected == -1


@pytest.mark.slow
def test_a_run_with_the_baseline_metrics_writes_them(tiny_plugin, tmp_path):
    pytest.importorskip("weightwatcher")
    from toolkit import analyze

    out = tmp_path / "b.nc"
    analyze(**{**TINY_RUN, "intervals": (1.0,), "seeds": 2, "max_steps": 20},
            metrics=("cosine", "zscore", "noise_confidence", "weight_norm", "ww_alpha"), out=out)
    with xr.open_dataset(out) as ds:
        assert ds["noise_confidence"].dims == ("interval",) and ds["noise_confidence_seed"].shape == (1, 2)
        assert ds["weight_norm"].values[0] > 0
        assert ds["ww_alpha"].dims == ("interval",)   # NaN allowed: tiny layers may not be fitted
