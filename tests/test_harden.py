"""Hardening (issue 18): bad models caught when built, data that changes between runs, full disks,
two runs on one work directory, counts and times that survive a resume, progress."""
from __future__ import annotations

import pytest
import toolkit
from toolkit.plugins import get_plugin_manager

from conftest import TINY_RUN, TinyCNN

RUN = {**TINY_RUN, "intervals": (1.0,), "seeds": 1}


# --- models that break the feature protocol, caught when built ----------------------------------

class NoPreLogits(TinyCNN):
    def forward_head(self, x):
        return self.fc(x.mean((2, 3)))


class IgnoresPreLogits(TinyCNN):
    num_features = 16

    def forward_head(self, x, pre_logits=False):
        return self.fc(x.mean((2, 3)))


class BadModels:
    __name__ = "bad-models"

    @toolkit.hookimpl
    def register_models(self, register):
        register("no-pre-logits", NoPreLogits)
        register("ignores-pre-logits", IgnoresPreLogits)


@pytest.fixture
def bad_models(tiny_plugin):
    get_plugin_manager().register(BadModels(), name="bad-models")
    try:
        yield
    finally:
        get_plugin_manager().unregister(name="bad-models")


@pytest.mark.parametrize("model, message", [
    ("no-pre-logits", "model 'no-pre-logits' \\(plugin 'bad-models'\\): forward_head does not accept "
                      "pre_logits=True"),
    ("ignores-pre-logits", "model 'ignores-pre-logits' \\(plugin 'bad-models'\\): forward_head\\(x, "
                           "pre_logits=True\\) returns the logits \\(3 values, one per class\\), not the "
                           "penultimate features \\(16 = its num_features\\)"),
])
def test_a_model_without_features_is_one_line_before_training(bad_models, monkeypatch, model, message):
    from toolkit.stages import train

    monkeypatch.setattr(train.Trainer, "next_stage", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(toolkit.PluginError, match=message) as info:
        toolkit.analyze(**{**RUN, "model": model})
    assert "\n" not in str(info.value)


# --- a dataset loader that is not deterministic -------------------------------------------------

def test_data_that_changed_since_the_work_directory_says_the_loader_must_be_deterministic(
        tmp_path, tiny_plugin, monkeypatch):
    import conftest

    work = tmp_path / "work"
    toolkit.analyze(work_dir=work, **RUN)
    real = conftest.make_tiny_dataset

    def shifted(*args, **kwargs):
        data = real(*args, **kwargs)
        data.train_images[0, 0, 0, 0] ^= 1
        return data

    monkeypatch.setattr(conftest, "make_tiny_dataset", shifted)
    with pytest.raises(toolkit.UsageError, match="was made by a run whose dataset plugin gave different "
                                                 "data .*a dataset loader must return the same data on "
                                                 "every call .*rerun with --fresh") as info:
        toolkit.analyze(work_dir=work, **RUN)
    assert "\n" not in str(info.value)


# --- a full disk ---------------------------------------------------------------------------------

TWO = {**TINY_RUN, "seeds": 1}  # two intervals


def _full_disk(monkeypatch):
    from toolkit import workdir

    monkeypatch.setattr(workdir, "FULL_DISK_BYTES", 1 << 62)  # every filesystem looks full


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file "
                 "data/3: file write failed"),
    RuntimeError("basic_ios::clear: iostream error"),
    OSError(28, "No space left on device"),
])
def test_a_full_disk_while_saving_training_is_one_line_naming_what_is_kept(tmp_path, tiny_plugin,
                                                                          monkeypatch, failure):
    import torch

    _full_disk(monkeypatch)
    real, calls = torch.save, []

    def fills_up(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:  # the training state of interval 1
            raise failure
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_up)
    with pytest.raises(toolkit.ToolkitError, match="could not write .*interval-1.pt \\(No space left on "
                                                   "device\\); the work finished before it is kept: "
                                                   "free the space and rerun the same command") as info:
        toolkit.analyze(out=tmp_path / "r.nc", **TWO)
    assert "\n" not in str(info.value)
    kept = sorted(p.name for p in (tmp_path / "r.work").iterdir())
    assert "interval-0.5.pt" in kept and "interval-1.pt" not in kept
    assert not any(name.endswith(".tmp") for name in kept)


def test_a_full_disk_while_writing_the_results_file_keeps_the_work_for_the_rerun(tmp_path, tiny_plugin,
                                                                               monkeypatch):
    import xarray as xr

    _full_disk(monkeypatch)
    real = xr.Dataset.to_netcdf

    def hdf_error(self, *args, **kwargs):
        raise RuntimeError("NetCDF: HDF error")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", hdf_error)
    out = tmp_path / "r.nc"
    with pytest.raises(toolkit.ToolkitError, match="could not write .*r.nc \\(No space left on device\\); "
                                                   "nothing was written, and .*r.work keeps all the "
                                                   "finished work: free the space and rerun") as info:
        toolkit.analyze(out=out, **RUN)
    assert "\n" not in str(info.value) and not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["r.work"]
    monkeypatch.setattr(xr.Dataset, "to_netcdf", real)
    toolkit.analyze(out=out, **RUN)
    assert out.exists()
