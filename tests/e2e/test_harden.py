"""Hardening (issue 18): bad models caught when built, data that changes between runs, full disks,
two runs on one work directory, counts and times that survive a resume, progress."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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


class WrongWidth(TinyCNN):
    num_features = 16

    def forward_head(self, x, pre_logits=False):
        x = x.mean((2, 3))
        return x[:, :7] if pre_logits else self.fc(x)


class BadModels:
    __name__ = "bad-models"

    @toolkit.hookimpl
    def register_models(self, register):
        register("no-pre-logits", NoPreLogits)
        register("ignores-pre-logits", IgnoresPreLogits)
        register("wrong-width", WrongWidth)


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
    ("wrong-width", "model 'wrong-width' \\(plugin 'bad-models'\\): forward_head\\(x, pre_logits=True\\) "
                    "returns 7 values per image, but its num_features says 16"),
])
def test_a_model_without_features_is_one_line_before_training(bad_models, monkeypatch, model, message):
    from toolkit.stages import train

    monkeypatch.setattr(train.Trainer, "next_stage", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(toolkit.PluginError, match=message) as info:
        toolkit.analyze(**{**RUN, "model": model})
    assert "\n" not in str(info.value)


# --- a dataset loader that is not deterministic -------------------------------------------------

@pytest.mark.slow
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
@pytest.mark.slow
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


@pytest.mark.slow
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
    assert info.value.exit_status == 1  # a run that failed on the way, not bad input (2)
    assert [p.name for p in tmp_path.iterdir()] == ["r.work"]
    monkeypatch.setattr(xr.Dataset, "to_netcdf", real)
    toolkit.analyze(out=out, **RUN)
    assert out.exists()


# --- two runs on one work directory --------------------------------------------------------------

def test_a_second_run_on_a_work_directory_in_use_is_refused_at_once_naming_the_first(tmp_path,
                                                                                   tiny_plugin,
                                                                                   monkeypatch):
    import os

    from toolkit.workdir import WorkDir

    def loaded(*args):
        raise AssertionError("the data were loaded before the refusal")

    monkeypatch.setattr("toolkit.stages.preflight.load_dataset", loaded)  # refused before that
    work = tmp_path / "r.work"
    with WorkDir(work).locked():
        with pytest.raises(toolkit.UsageError, match=f"r.work is in use by another run \\(process "
                                                     f"{os.getpid()} on .*\\); wait for it to finish"):
            toolkit.analyze(out=tmp_path / "r.nc", **RUN)
        assert (work / "lock").read_text().split()[0] == str(os.getpid())
    assert not work.exists()  # the lock goes with the run, and the empty folder with it


def test_another_runs_probe_of_the_lock_does_not_refuse_the_run_taking_it(tmp_path):
    """check_free holds the lock shared for a moment; a run taking it then waits that moment out
    instead of being refused as "in use by a process that has not said its id"."""
    import fcntl
    import os
    import threading
    import time

    from toolkit.workdir import WorkDir

    work = tmp_path / "r.work"
    work.mkdir()
    fd = os.open(work / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a probe, caught in the act
    threading.Thread(target=lambda: (time.sleep(0.3), os.close(fd))).start()
    with WorkDir(work).locked():
        assert (work / "lock").read_text().split()[0] == str(os.getpid())


def test_a_lock_whose_holder_is_ending_is_waited_for_not_refused(tmp_path):
    # A killed run's lock frees only when every process sharing it has ended (torchrun's ranks end
    # a moment after torchrun): the holder named in the lock is gone, so the next run waits.
    from toolkit.workdir import WorkDir

    work = tmp_path / "r.work"
    work.mkdir()
    holder = textwrap.dedent(f"""
        import fcntl, os, socket, time
        fd = os.open({str(work / "lock")!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{{os.getpid()}} {{socket.gethostname()}}\\n".encode())
        if os.fork() == 0:  # a child that shares the lock outlives the holder by a second
            time.sleep(1.0)
            os._exit(0)
        print("held", flush=True)
    """)
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", holder], check=True, stdout=subprocess.DEVNULL)
    with WorkDir(work).locked():
        assert time.monotonic() - started < 20
    assert not work.exists()  # (a live holder is refused at once: the test above)


@pytest.mark.slow
def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, tiny_plugin):
    work = tmp_path / "r.work"
    work.mkdir()
    (work / "lock").write_text("999999999 elsewhere\n")  # no flock held: its process is gone
    toolkit.analyze(out=tmp_path / "r.nc", **RUN)
    assert sorted(p.name for p in work.iterdir()) == ["interval-1.pt", "run.json"]


TINY_CLI = Path(__file__).resolve().parents[1] / "tiny_cli.py"
ARGS = ["--model", "tiny-cnn", "--dataset", "tiny", "--intervals", "0.5,1", "--seeds", "2",
        "--epochs", "25", "--train_lr", "0.1", "--train_batch_size", "16", "--max_steps", "100",
        "--batch_size", "4", "--noprogress", "--noplots"]


def cli(out, *extra, pause=0.0):
    env = {**os.environ, "TOOLKIT_TEST_PAUSE": str(pause), "TOOLKIT_LOAD_ENTRYPOINTS": "0"}
    return subprocess.Popen([sys.executable, str(TINY_CLI), "analyze", *ARGS, "--out", str(out), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(process, path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.slow
def test_two_processes_on_one_out_the_second_refused_at_once_then_the_killed_first_taken_over(tmp_path):
    out = tmp_path / "r.nc"
    first = cli(out, pause=2.0)
    try:
        wait_for(first, tmp_path / "r.work" / "interval-0.5.pt")
        second = cli(out)
        _, stderr = second.communicate(timeout=120)
        assert second.returncode == 2, stderr
        assert f"is in use by another run (process {first.pid} on " in stderr
        assert stderr.count("\n") == 1 and first.poll() is None  # one line; the first goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    third = cli(out)  # the killed run's lock is stale: taken over
    _, stderr = third.communicate(timeout=600)
    assert third.returncode == 0, stderr
    assert sorted(p.name for p in (tmp_path / "r.work").iterdir()) == ["interval-0.5.pt", "interval-1.pt",
                                                                       "run.json"]


# --- counts and times that survive a resume ------------------------------------------------------

@pytest.mark.slow
def test_a_killed_and_resumed_run_counts_the_image_steps_and_times_of_the_whole_run(tmp_path):
    from toolkit.workdir import WorkDir, load_checkpoint

    reference = tmp_path / "a" / "r.nc"
    reference.parent.mkdir()
    assert cli(reference).wait(timeout=600) == 0
    out = tmp_path / "r.nc"
    work = tmp_path / "r.work"
    first = cli(out, pause=1.0)
    wait_for(first, work / "unit-0.5-seed-1-rows-0-3.npz")  # interval 0.5 finished, 1 not trained
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (work / "interval-1.pt").exists()
    before = {"training": load_checkpoint(work / "interval-0.5.pt")["spent"]["training"]}
    for path in [*work.glob("protos-*.npz"), *work.glob("unit-*.npz")]:
        for stage, value in WorkDir(work).spent(path).items():
            before[stage] = before.get(stage, 0.0) + value
    assert cli(out).wait(timeout=600) == 0
    with toolkit.open_results(reference) as whole, toolkit.open_results(out) as resumed:
        assert resumed.attrs["image_steps"] == whole.attrs["image_steps"]
        assert before["image_steps"] < whole.attrs["image_steps"]  # the resumed run did the rest
        for stage in ("training", "synthesis", "features", "probes"):
            assert resumed.attrs[f"time_{stage}_s"] >= round(before.get(stage, 0.0), 3) - 0.001, stage
        assert resumed.attrs["time_training_s"] > round(before["training"], 3)  # and trained interval 1


# --- progress ------------------------------------------------------------------------------------

class Bar:
    def __init__(self):
        self.n, self.total, self.disable, self.updates = 0, None, False, []

    def update(self, n=1):
        self.updates.append(n)
        self.n += n

    def refresh(self):
        pass

    def close(self):
        pass


def test_synthesis_progress_counts_steps_so_images_at_the_step_cap_weigh_what_they_cost():
    import torch

    from toolkit.progress import StepProgress

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    bar = Bar()
    progress = StepProgress(bar, images=10, cap=100)
    with progress.counting(model):
        for _ in range(6):                       # 10 images step 5 times; 8 arrive at the 6th test
            model(torch.zeros(10, 4))
        progress.finished(8)
        assert (bar.n, bar.total) == (60, 260)  # the 2 left may run to the cap: 2 x 100 steps
        for _ in range(95):                      # and they do, with a last test each
            model(torch.zeros(2, 4))
        assert bar.n == 250                      # counted in images it would read 8 of 10
        progress.finished(2)
    progress.settle(10, 8 * 5 + 2 * 100)
    assert (bar.n, bar.total) == (250, 250) and min(bar.updates) > 0  # never backwards
    # the next work queue is estimated at the average an image took so far (24 steps)
    later = StepProgress(Bar(), images=20, cap=100)
    later.settle(10, 240)                        # a queue not counted as it ran (compiled model)
    assert (later.bar.n, later.bar.total) == (240, 240 + 10 * 24)


def test_the_progress_total_never_exceeds_what_the_images_left_can_take():
    """Images at work were counted twice (their steps so far, and the cap still ahead), so a bar
    read 940 image steps for about 500 possible."""
    import torch

    from toolkit.progress import StepProgress

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    bar = Bar()
    progress = StepProgress(bar, images=10, cap=5)
    with progress.counting(model):
        for _ in range(3):
            model(torch.zeros(10, 4))
            assert bar.total <= 10 * (5 + 1)  # 5 steps and a last test each, at most
    assert bar.total == 60 and bar.n == 30


def test_real_synthesis_moves_the_bar_forward_only():
    import torch

    import toolkit
    from toolkit.progress import StepProgress
    from toolkit_plugins.synthesis import prototype

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    bar = Bar()
    progress = StepProgress(bar, images=24, cap=20)
    settings = toolkit.SynthesisSettings(lr=0.1, max_steps=20, batch_size=4, loss_threshold=0.3)
    for queue in range(2):
        start = torch.rand(12, 3, 2, 2, generator=torch.Generator().manual_seed(queue))
        with progress.counting(model):
            result = prototype(model, start, torch.arange(12) % 3, settings, progress.finished)
        progress.settle(12, int(result.steps.sum()))
        assert min(bar.updates) > 0 and bar.n <= bar.total <= 24 * 21
    assert bar.n == bar.total and bar.n >= int(result.steps.sum())


@pytest.mark.slow
def test_the_run_says_what_runs_and_each_bar_which_interval_of_how_many(tmp_path, tiny_plugin, capsys,
                                                                        monkeypatch):
    from toolkit.stages import context

    shown = []
    real = context.progress_bar

    def recorded(description, total, enabled=False, unit="step"):
        shown.append((description, enabled))
        return real(description, total, enabled=False, unit=unit)

    monkeypatch.setattr(context, "progress_bar", recorded)
    monkeypatch.setattr("toolkit.training.progress_bar", recorded)
    monkeypatch.setattr("toolkit.pipeline.interactive", lambda: True)  # as in a terminal or notebook
    toolkit.analyze(out=tmp_path / "r.nc", **{**RUN, "intervals": (0.5, 1.0)})
    err = capsys.readouterr().err
    assert err.startswith("toolkit: tiny-cnn on tiny, 2 intervals (0.5,1), 1 seed (0), synthesizer "
                          f"prototype, on cpu; results -> {tmp_path / 'r.nc'} (work in "
                          f"{tmp_path / 'r.work'})\n")
    assert [d for d, _ in shown] == ["train 50% (interval 1/2)", "probe 50% (interval 1/2, acc 1.000)",
                                     "train 100% (interval 2/2)", "probe 100% (interval 2/2, acc 1.000)"]
    assert all(enabled for _, enabled in shown)  # progress=None: shown when someone watches
    shown.clear()
    monkeypatch.setattr("toolkit.pipeline.interactive", lambda: False)
    toolkit.analyze(**RUN)
    assert shown and not any(enabled for _, enabled in shown) and capsys.readouterr().err == ""


def test_someone_watches_in_a_terminal(monkeypatch):
    import io

    from toolkit.progress import interactive

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    assert interactive()
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not interactive()
