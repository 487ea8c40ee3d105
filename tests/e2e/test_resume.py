"""Nothing lost, nothing executed: resume after a kill, safe checkpoints, numerical faults."""
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import toolkit
from toolkit.__main__ import main
from toolkit.errors import NumericalError

from conftest import TINY_RUN, TinyCNN, make_tiny_dataset

TINY_CLI = Path(__file__).resolve().parents[1] / "tiny_cli.py"
RUN = {**TINY_RUN, "seeds": 2}
ARGS = ["--model", "tiny-cnn", "--dataset", "tiny", "--intervals", "0.5,1", "--seeds", "2",
        "--epochs", "25", "--train_lr", "0.1", "--train_batch_size", "16", "--max_steps", "100",
        "--batch_size", "4", "--noprogress"]


def data_of(path) -> xr.Dataset:
    """A results file's numbers and coordinates, without the attributes that differ run to run."""
    with toolkit.open_results(path) as ds:
        return ds.load().drop_attrs()


def cli(out, *extra, pause=0.0, wait=True):
    env = {**os.environ, "TOOLKIT_TEST_PAUSE": str(pause), "TOOLKIT_LOAD_ENTRYPOINTS": "0"}
    command = [sys.executable, str(TINY_CLI), "analyze", *ARGS, "--out", str(out), *extra]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
    return process


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "r.nc"
    cli(out)
    return data_of(out)


def kill_when(process, path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [
    ["interval-0.5.pt"],                                # trained once, nothing synthesised
    ["protos-0.5-seed-1.npz"],                          # the prototypes done, no grid yet
    ["unit-0.5-seed-0-rows-0-3.npz"],                   # between two grids of one interval
    ["interval-1.pt", "unit-0.5-seed-0-rows-0-3.npz"],  # killed twice: the resumed run again
])
def test_killed_run_resumes_to_the_uninterrupted_results(tmp_path, uninterrupted, kill_after):
    out = tmp_path / "r.nc"
    for name in kill_after:
        process = cli(out, pause=1.0, wait=False)
        kill_when(process, tmp_path / "r.work" / name)
        assert not out.exists()
    cli(out)
    xr.testing.assert_identical(data_of(out), uninterrupted)
    assert sorted(p.name for p in (tmp_path / "r.work").iterdir()) == ["interval-0.5.pt", "interval-1.pt",
                                                                       "run.json"]


def test_rerun_skips_finished_units_and_gives_the_same_numbers(tmp_path, tiny_plugin, monkeypatch):
    from toolkit.stages import synthesize, train

    work = tmp_path / "work"
    first = toolkit.analyze(work_dir=work, **RUN)  # no out: the units stay
    assert len(list(work.glob("unit-*.npz"))) == 4

    def nothing_to_do(*args, **kwargs):
        raise AssertionError("finished work was done again")

    monkeypatch.setattr(synthesize, "synthesize_prototypes", nothing_to_do)
    monkeypatch.setattr(synthesize, "synthesize_rows", nothing_to_do)
    monkeypatch.setattr(train.Trainer, "next_stage", nothing_to_do)
    again = toolkit.analyze(work_dir=work, **RUN)
    xr.testing.assert_identical(first.drop_attrs(), again.drop_attrs())


@pytest.mark.slow
def test_work_of_another_configuration_is_refused_and_fresh_starts_over(tmp_path, tiny_plugin, capsys):
    work = tmp_path / "work"
    toolkit.analyze(work_dir=work, **RUN)
    with pytest.raises(toolkit.UsageError, match="holds work of a different run \\(lr: 0.5 there, 0.25 "
                                                 "here\\); rerun with --fresh"):
        toolkit.analyze(work_dir=work, **{**RUN, "lr": 0.25})
    changed = toolkit.analyze(work_dir=work, fresh=True, **{**RUN, "lr": 0.25})
    assert '"lr": 0.25' in (work / "run.json").read_text()
    assert changed.attrs["config"] and len(list(work.glob("unit-*.npz"))) == 4


def test_leftover_files_without_identity_are_not_adopted(tmp_path, tiny_plugin):
    work = tmp_path / "work"
    work.mkdir()
    (work / "unit-0.5-seed-0-rows-0-3.npz").write_bytes(b"left over")
    with pytest.raises(toolkit.UsageError, match="no run.json, so they cannot be matched"):
        toolkit.analyze(work_dir=work, **RUN)


def test_failed_run_before_any_unit_leaves_no_work_directory(tmp_path, tiny_plugin, monkeypatch):
    from toolkit.stages import train

    monkeypatch.setattr(train.Trainer, "next_stage", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        toolkit.analyze(out=tmp_path / "r.nc", **RUN)
    assert list(tmp_path.iterdir()) == []


# --- analysing given weights -------------------------------------------------------------------

@pytest.mark.slow
def test_checkpoints_of_a_finished_run_give_its_results_without_training(tmp_path, tiny_plugin, monkeypatch):
    from toolkit.stages import train

    trained = toolkit.analyze(out=tmp_path / "a.nc", **RUN)
    monkeypatch.setattr(train, "Trainer", None)  # no training may happen
    again = toolkit.analyze(out=tmp_path / "b.nc", checkpoints=tmp_path / "a.work", **RUN)
    xr.testing.assert_identical(trained.drop_attrs(), again.drop_attrs())
    assert not (tmp_path / "b.work").exists()  # nothing of that run is left to keep


@pytest.mark.slow
def test_a_plain_state_dict_of_the_network_is_analysed(tmp_path, tiny_plugin):
    data = make_tiny_dataset()
    folder = tmp_path / "mine"
    folder.mkdir()
    torch.manual_seed(1)
    for t in (0.5, 1.0):
        torch.save(TinyCNN(3, 1, 6).state_dict(), folder / f"interval-{t:g}.pt")
    ds = toolkit.analyze(checkpoints=folder, **RUN)
    assert list(ds["train_size"].values) == [-1, -1]  # unknown for weights trained elsewhere
    assert 0 <= float(ds["test_accuracy"][0]) <= 1 and ds.sizes["k"] == len(data.class_names)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _checkpoint_folder(tmp_path, content) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for t in (0.5, 1.0):
        path = folder / f"interval-{t:g}.pt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
    return folder


def test_checkpoint_carrying_a_pickle_payload_is_refused_and_not_run(tmp_path, tiny_plugin):
    marker = tmp_path / "payload-ran"
    folder = _checkpoint_folder(tmp_path, {"model": _Payload(marker)})
    with pytest.raises(toolkit.UsageError, match="holds Python objects, not just weights .*refusing to "
                                                 "load it, since that could run code"):
        toolkit.analyze(checkpoints=folder, **RUN)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "is not a readable PyTorch file"),
    (TinyCNN(5, 1, 6).state_dict(), "does not fit model 'tiny-cnn' for 3 classes of 1x6x6 images: "
                                    "size mismatch for fc.weight"),
    ([1, 2, 3], "holds a list, not a state_dict"),
    ({"model": {"conv": 3}}, "is not a state_dict"),
])
def test_bad_checkpoints_are_one_line_errors(tmp_path, tiny_plugin, content, message):
    folder = _checkpoint_folder(tmp_path, content)
    with pytest.raises(toolkit.UsageError, match=message) as info:
        toolkit.analyze(checkpoints=folder, **RUN)
    assert "\n" not in str(info.value)


def test_a_plain_pickle_is_refused_in_one_line_of_ours(tmp_path, tiny_plugin, recwarn):
    # pickle.dump of a state_dict is not torch.save's format: torch warns about its protocol and
    # advises weights_only=False, which is exactly what a checkpoint must not be loaded with
    folder = _checkpoint_folder(tmp_path, pickle.dumps({"fc.weight": [1.0]}))
    with pytest.raises(toolkit.UsageError, match=r"interval-0.5.pt is not a readable PyTorch file "
                                                 r"\(.+\); a checkpoint is what torch.save") as info:
        toolkit.analyze(checkpoints=folder, **RUN)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


def test_missing_checkpoint_names_what_is_there(tmp_path, tiny_plugin):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save(TinyCNN(3, 1, 6).state_dict(), folder / "interval-0.5.pt")
    with pytest.raises(toolkit.UsageError, match="lacks interval-1.pt .* it holds: interval-0.5.pt"):
        toolkit.analyze(checkpoints=folder, **RUN)


# --- numerical faults --------------------------------------------------------------------------

def test_diverging_training_stops_naming_the_interval(tmp_path, tiny_plugin, capsys):
    with pytest.raises(NumericalError, match="training reached NaN or Inf losses before interval 50%"):
        toolkit.analyze(**{**RUN, "train_lr": 1e12})
    argv = [*ARGS, "--train_lr", "1e12"]
    assert main(["analyze", "--out", str(tmp_path / "r.nc"), *argv]) == 1
    assert "toolkit: error: training reached NaN" in capsys.readouterr().err


@pytest.mark.slow
def test_nan_features_stop_the_run_naming_interval_and_seed(tmp_path, tiny_plugin, monkeypatch):
    from toolkit.stages import features as stage

    real = stage.extract_features
    calls = []

    def poisoned(model, images, **kwargs):
        features = real(model, images, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # the second seed's grid (one block per seed here)
            features[-1, 0] = float("nan")
        return features

    monkeypatch.setattr(stage, "extract_features", poisoned)
    with pytest.raises(NumericalError, match="interval 50%, seed 1: 1 of 9 images have NaN or Inf"):
        toolkit.analyze(out=tmp_path / "r.nc", **RUN)
    assert not (tmp_path / "r.nc").exists()
    assert (tmp_path / "r.work" / "unit-0.5-seed-0-rows-0-3.npz").exists()  # finished work is kept
    # asked to record and go on, the same work directory finishes the run with the NaN in the file
    ds = toolkit.analyze(out=tmp_path / "r.nc", **{**RUN, "nonfinite": "record"})
    assert np.isnan(ds["features"].values).any() and np.isfinite(ds["test_accuracy"].values).all()


def test_summary_gives_the_converged_share_and_the_images_it_rests_on(tiny_plugin):
    ds = toolkit.analyze(**{**RUN, "max_steps": 1})
    converged = ds["converged"].isel(interval=0).values
    assert not converged.all()
    header, first = toolkit.summary(ds).splitlines()[1:3]
    cells = dict(zip(header.split(), first.split()))
    assert cells["images"] == str(converged.size)
    assert cells["converged"] == f"{converged.mean():.1%}"
    assert cells["test_acc"] == f"{float(ds['test_accuracy'][0]):.1%}"  # shares are percentages


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_rerun_finishes(tmp_path, tiny_plugin, monkeypatch):
    saved = []
    real = np.savez

    def disk_fills_up(file, **arrays):
        if len(saved) == 3:  # the prototypes of both seeds and the grid of seed 0 are saved
            raise OSError(28, "No space left on device")
        saved.append(file)
        real(file, **arrays)

    monkeypatch.setattr(np, "savez", disk_fills_up)
    with pytest.raises(toolkit.ToolkitError, match="could not write .*unit-0.5-seed-1-rows-0-3.npz \\(No "
                                                   "space left "
                                                   "on device\\); the work finished before it is kept"):
        toolkit.analyze(out=tmp_path / "r.nc", **RUN)
    assert sorted(p.name for p in (tmp_path / "r.work").iterdir()) == [
        "interval-0.5.pt", "protos-0.5-seed-0.npz", "protos-0.5-seed-1.npz", "run.json",
        "unit-0.5-seed-0-rows-0-3.npz"]  # no torn file
    monkeypatch.setattr(np, "savez", real)
    ds = toolkit.analyze(out=tmp_path / "r.nc", **RUN)
    xr.testing.assert_identical(ds.drop_attrs(), toolkit.analyze(**RUN).drop_attrs())


def test_auto_sizes_resolved_on_another_device_are_refused(tmp_path, tiny_plugin, monkeypatch):
    # "auto" fixes the pieces of synthesis on the device it runs on; a work directory made with
    # other pieces (a CPU's batch, resumed on a GPU) cannot be mixed in.
    from toolkit.stages import preflight

    work = tmp_path / "work"
    run = {**RUN, "batch_size": "auto", "intervals": (1.0,), "seeds": 1}
    toolkit.analyze(work_dir=work, **run)
    monkeypatch.setattr(preflight, "auto_batch_size", lambda device, shape: 1024)
    with pytest.raises(toolkit.UsageError, match="pieces.batch_size: [0-9]+ there, 1024 here"):
        toolkit.analyze(work_dir=work, **run)
