"""torchrun: the same study on several processes gives the same file; resume with another rank count."""
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import toolkit
from toolkit import distributed
from toolkit.distributed import World, claim, seed_groups, share

TINY_CLI = Path(__file__).resolve().parents[1] / "tiny_cli.py"
ARGS = ["--model", "tiny-cnn", "--dataset", "tiny", "--intervals", "0.5,1", "--seeds", "3",
        "--epochs", "25", "--train_lr", "0.1", "--train_batch_size", "16", "--max_steps", "100",
        "--batch_size", "4", "--noprogress", "--noplots"]


def data_of(path) -> xr.Dataset:
    with toolkit.open_results(path) as ds:
        return ds.load().drop_attrs()


def launch(out, *extra, ranks=1, pause=0.0, wait=True):
    """The tiny study as a real job: one plain process, or ``ranks`` processes under torchrun."""
    # One thread per process everywhere (torchrun's own default for several processes), so every
    # run takes the same kernels whatever the machine's core count.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOOLKIT_LOAD_ENTRYPOINTS": "0",
           "TOOLKIT_TEST_PAUSE": str(pause)}
    launcher = [sys.executable] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    command = [*launcher, str(TINY_CLI), "analyze", *ARGS, "--out", str(out), *extra]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    if wait:
        stdout, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr
        process.stdout_text = stdout
    return process


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """A one-process run that trains; its work directory keeps the weights of each interval."""
    out = tmp_path_factory.mktemp("single") / "one.nc"
    launch(out)
    return out


@pytest.fixture(scope="module")
def blocked(single, tmp_path_factory):
    """The same weights analysed by one process in blocks of one row (3 per seed and interval),
    with C and R streamed into the file."""
    out = tmp_path_factory.mktemp("blocked") / "rows.nc"
    launch(out, *BLOCKED, "--checkpoints", str(single.with_suffix(".work")))
    return out


BLOCKED = ("--block_rows", "1", "--metrics", "cosine_summaries", "--save", "C,R")


def test_share_deals_units_out_balanced_by_work():
    assert share([1.0] * 5, 2) == [[0, 2, 4], [1, 3]]
    assert share([1.0] * 2, 4) == [[0], [1], [], []]
    # the big item alone, the small ones together
    assert share([1.0, 5.0, 2.0, 2.0], 2) == [[1], [0, 2, 3]]
    assert share([], 3) == [[], [], []]


def test_ranks_claim_items_longest_first_each_exactly_once(monkeypatch):
    import torch.distributed as dist

    costs = [1.0, 5.0, 2.0, 3.0]
    assert list(claim(World(), costs)) == [1, 3, 2, 0]            # one process: all, longest first
    store = dist.HashStore()                                       # what the process group shares
    # two ranks are two processes, each making its first claim: the same key
    monkeypatch.setattr(toolkit.distributed, "_CLAIMS", itertools.repeat(0))
    fast, slow = (claim(World(rank, 2), costs, store=store) for rank in (0, 1))
    # rank 1 is slow: it finishes its first item while rank 0 has done three
    taken = {0: [next(fast)], 1: [next(slow)]}
    taken[0] += [next(fast), next(fast)]
    assert taken == {0: [1, 2, 0], 1: [3]}
    assert next(fast, None) is None and next(slow, None) is None   # nothing is done twice
    # a PyTorch that hides the store: dealt out in advance, balanced by cost
    monkeypatch.setattr(toolkit.distributed, "_default_store", lambda: None)
    assert [list(claim(World(rank, 2), costs)) for rank in (0, 1)] == share(costs, 2) == [[0, 1], [2, 3]]


def test_seed_groups_depend_on_the_configuration_not_on_the_ranks():
    # each group holds at least a micro-batch of images; a short remainder joins the last one
    assert seed_groups([0, 1, 2, 3, 4], images_per_seed=100, batch_size=2048) == [[0, 1, 2, 3, 4]]
    assert seed_groups([0, 1, 2, 3, 4], images_per_seed=100, batch_size=200) == [[0, 1], [2, 3, 4]]
    assert seed_groups([0, 1, 2], images_per_seed=10_000, batch_size=128) == [[0], [1], [2]]
    assert seed_groups([7], images_per_seed=9, batch_size=4) == [[7]]


@pytest.mark.parametrize("rank", [0, 1])
def test_an_error_on_rank_0_is_raised_on_every_rank(monkeypatch, rank):
    sent, made = [], []

    def broadcast(box, src):  # rank 0's answer, as the process group would carry it
        if rank == 0:
            sent.append(box[0])
        else:
            box[0] = (False, toolkit.UsageError("bad option"))

    monkeypatch.setattr(distributed.dist, "broadcast_object_list", broadcast)
    world = distributed.World(rank=rank, size=2)

    def make():
        made.append(rank)
        raise toolkit.UsageError("bad option")

    with pytest.raises(toolkit.UsageError, match="bad option"):
        world.from_main(make)
    assert made == ([0] if rank == 0 else [])  # rank 0 alone makes the answer
    assert [type(error) for _, error in sent] == ([toolkit.UsageError] if rank == 0 else [])
    monkeypatch.setattr(distributed.dist, "broadcast_object_list",
                        lambda box, src: box.__setitem__(0, (True, 7)) if rank else None)
    assert world.from_main(lambda: 7) == 7


def test_an_error_that_cannot_travel_is_sent_as_its_text(monkeypatch):
    sent = []
    monkeypatch.setattr(distributed.dist, "broadcast_object_list", lambda box, src: sent.append(box[0]))

    class Stubborn(Exception):
        def __init__(self, a, b):  # pickles, but cannot be rebuilt from its args
            super().__init__(f"{a} and {b}")

    def make():
        raise Stubborn(1, 2)

    with pytest.raises(Stubborn):  # rank 0 raises the original; the others, its text
        distributed.World(rank=0, size=2).from_main(make)
    assert type(sent[0][1]) is RuntimeError and str(sent[0][1]) == "Stubborn: 1 and 2"


@pytest.mark.slow
@pytest.mark.parametrize("pieces", ["whole grids", "blocks of rows"])
def test_two_ranks_give_the_data_of_one_process(single, blocked, tmp_path, pieces):
    # Given the same weights, the data are identical, bit for bit: with whole grids as units
    # (two ranks share three seeds) and with blocks of one row (nine blocks per interval).
    one, extra = (single, ()) if pieces == "whole grids" else (blocked, BLOCKED)
    two = tmp_path / "two.nc"
    result = launch(two, *extra, "--checkpoints", str(single.with_suffix(".work")), ranks=2)
    xr.testing.assert_identical(data_of(two), data_of(one))
    assert result.stdout_text.count("results:") == 1  # rank 0 alone prints
    with toolkit.open_results(two) as ds:
        assert ds.attrs["ranks"] == 2


@pytest.mark.slow
def test_two_ranks_train_data_parallel_and_one_process_reads_their_weights(single, tmp_path):
    # Training is data-parallel: the same batches, each rank half of each. The gradients' summation
    # order and, on the CPU, each rank's own BatchNorm batch statistics make the weights differ
    # from one process's, so only the model's quality is compared with the one-process run ...
    two = tmp_path / "trained.nc"
    launch(two, ranks=2)
    one, got = data_of(single), data_of(two)
    np.testing.assert_array_equal(got.train_size, one.train_size)
    np.testing.assert_allclose(got.test_accuracy, one.test_accuracy, atol=0.1)
    # ... and its training states hold plain weights that one process analyses to the same data.
    again = tmp_path / "again.nc"
    launch(again, "--checkpoints", str(two.with_suffix(".work")))
    xr.testing.assert_identical(data_of(again), got)


@pytest.mark.slow
def test_a_two_rank_run_killed_midway_resumes_with_one_rank(single, blocked, tmp_path):
    out = tmp_path / "resumed.nc"
    given = (*BLOCKED, "--checkpoints", str(single.with_suffix(".work")))
    job = launch(out, *given, ranks=2, pause=3.0, wait=False)
    work = out.with_suffix(".work")
    deadline = time.monotonic() + 600
    while not any(work.glob("unit-*.npz")):
        assert job.poll() is None, job.communicate()[1]
        assert time.monotonic() < deadline, "no unit was ever written"
        time.sleep(0.05)
    _kill_job(job)  # torchrun and both ranks, as a scheduler would
    finished = sorted(p.name for p in work.glob("unit-*.npz"))
    assert 0 < len(finished) < 18 and not out.exists()  # of 2 intervals x 3 seeds x 3 rows
    launch(out, *given)  # the same command, one process
    xr.testing.assert_identical(data_of(out), data_of(blocked))


def _processes() -> dict[int, tuple[str, int]]:
    """Every process: pid -> (state, parent pid), from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        found[int(stat.parent.name)] = (fields[0], int(fields[1]))
    return found


def _kill_job(job, timeout: float = 60.0) -> None:
    """SIGKILL a torchrun job whole, as a scheduler kills its cgroup, and wait until every process
    has ended: torchrun starts each rank in a session of its own, so killing torchrun's process
    group leaves the ranks running (they hold the work directory until they notice)."""
    table, family, grew = _processes(), {job.pid}, True
    while grew:
        more = {pid for pid, (_, parent) in table.items() if parent in family} - family
        family |= more
        grew = bool(more)
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    job.wait()
    deadline = time.monotonic() + timeout
    while any(_processes().get(pid, ("X",))[0] not in ("Z", "X") for pid in family):
        assert time.monotonic() < deadline, f"the killed job's processes {sorted(family)} did not end"
        time.sleep(0.05)


@pytest.mark.slow
def test_an_error_on_the_ranks_ends_the_job_with_one_line(tmp_path):
    result = launch(tmp_path / "x.nc", "--checkpoints", str(tmp_path / "missing"), ranks=2,
                    wait=False)
    _, stderr = result.communicate(timeout=300)
    assert result.returncode != 0
    # Both ranks refuse it; whichever speaks first ends the job (rank 1 names itself).
    assert re.search(r"toolkit: error: (rank 1 of 2: )?--checkpoints '.*missing' ", stderr), stderr
    assert not (tmp_path / "x.nc").exists()


@pytest.mark.slow
def test_two_ranks_without_out_share_a_temporary_work_directory(single, tmp_path):
    # analyze() without out: rank 0 makes the temporary work directory and tells the other rank,
    # which finds rank 0's prototypes there; the folder is gone at the end.
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOOLKIT_LOAD_ENTRYPOINTS": "0", "TMPDIR": str(temp)}
    features = tmp_path / "features.npy"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(TINY_CLI.with_name("tiny_api.py")), str(features), str(single.with_suffix(".work"))]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(features), data_of(single)["features"].values)
    assert list(temp.glob("toolkit-work-*")) == []


@pytest.mark.slow
def test_a_two_rank_job_locks_its_work_directory_once_for_all_its_ranks(tmp_path):
    # Rank 0 locks for the job (its ranks share the directory, so the other does not try); a run
    # started meanwhile on the same --out is refused at once, naming rank 0's process.
    out = tmp_path / "r.nc"
    job = launch(out, ranks=2, pause=1.0, wait=False)
    lock = out.with_suffix(".work") / "lock"
    deadline = time.monotonic() + 600
    while not (lock.exists() and lock.read_text().strip()):
        assert job.poll() is None, job.communicate()[1]
        assert time.monotonic() < deadline, "the job never locked its work directory"
        time.sleep(0.05)
    holder = lock.read_text().split()[0]
    other = launch(out, wait=False)
    _, stderr = other.communicate(timeout=300)
    assert other.returncode == 2 and f"is in use by another run (process {holder} on " in stderr
    _, stderr = job.communicate(timeout=900)
    assert job.returncode == 0, stderr  # the job itself went on and finished
    assert not lock.exists()
