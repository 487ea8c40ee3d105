"""Running one study on several processes: ``torchrun --nproc-per-node=N -m toolkit analyze ...``.

PyTorch's own engine does the work: ``torch.distributed`` initialised from the environment torchrun
sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...), ``gloo`` on the CPU and
``nccl`` on CUDA, and :class:`~torch.nn.parallel.DistributedDataParallel` for training. Without
those variables (or with ``WORLD_SIZE=1``) nothing is initialised and a run is the plain
single-process one.

How the work divides: training is data-parallel (every rank takes its slice of each global batch,
DistributedDataParallel averages the gradients). Synthesis of an interval runs in two phases, each
split into fixed pieces that are each one work queue: first the class prototypes, in groups of
seeds (:func:`seed_groups`); then the intermediary prototypes, in *blocks* of the grid (:func:`blocks`):
groups of seeds while a seed's grid is small, rows ``k`` of one seed's grid when it is large. The
pieces are handed out as the ranks ask for them, longest first (:func:`claim`); every rank
saves what it finished in the shared work directory (where the others find the prototypes), and
rank 0 gathers the blocks, writes the one results file and prints. Pieces depend on the configuration
alone, so given the same weights the file's data are bit-identical whatever the number of ranks,
and a job restarted with another number resumes the same pieces.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import itertools
import os
import pickle
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from toolkit.errors import UsageError

# How long a collective waits for a rank before the job fails. Ranks wait for each other at the end
# of every interval, up to a whole block's synthesis (hours on a CPU), hence a day; torchrun ends
# every rank at once when one of them exits with an error, so this only bounds a hung rank.
TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("TOOLKIT_DIST_TIMEOUT_MIN", "1440")))


@dataclasses.dataclass(frozen=True)
class World:
    """Where this process stands in the job: ``rank`` of ``size`` (one process: 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the results file, prints and shows progress."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first, then the other ranks (which then see what it did: a
        dataset it fetched, a work directory it cleared)."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def from_main(self, make: Callable[[], Any]) -> Any:
        """``make()`` run on rank 0 alone, its value on every rank: one answer for all the ranks
        (what is left to do, where the temporary work directory is). Where ``make()`` raises, every
        rank raises it, rather than the others waiting for an answer that never comes."""
        if not self.distributed:
            return make()
        answer = None
        if self.main:
            try:
                answer = (True, make())
            except Exception as error:  # noqa: BLE001 (re-raised on every rank)
                # the others get its text where it cannot be pickled; rank 0 raises the original
                self.broadcast((False, error if _travels(error) else RuntimeError(
                    f"{type(error).__name__}: {error}")))
                raise
        made, value = self.broadcast(answer)
        if not made:
            raise value
        return value

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` on rank 0 (in rank order); None on the others."""
        if not self.distributed:
            return [value]
        gathered = [None] * self.size if self.main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        if not self.distributed:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, value)
        return gathered

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (each rank learns the answer)."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], device=_collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())


def world(device: torch.device | str = "cpu") -> World:
    """This process's :class:`World`, joining torchrun's process group on first use (``nccl``
    when the run's ``device`` is CUDA, else ``gloo``)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_available():
        raise UsageError("WORLD_SIZE is set but this PyTorch build has no torch.distributed")
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise UsageError(f"WORLD_SIZE={size} but {', '.join(missing)} not set; start the job "
                             "with torchrun (see the README's scaling section)")
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=TIMEOUT)
        atexit.register(_leave)
    return World(rank=rank, size=size, local_rank=local_rank)


def device_for(world: World, device: torch.device) -> torch.device:
    """Each rank's device: ``cuda`` (or ``auto`` on a GPU machine) means ``cuda:LOCAL_RANK``."""
    if world.distributed and device.type == "cuda" and device.index is None:
        return torch.device("cuda", world.local_rank % max(1, torch.cuda.device_count()))
    return device


def seed_groups(seeds: Sequence[int], images_per_seed: int, batch_size: int) -> list[list[int]]:
    """Group an interval's seeds into pieces of synthesis work, each one work queue: the class
    prototypes (``n`` images per seed) and the grids (``n^2``, before :func:`blocks` cuts rows).

    Consecutive seeds are grouped until a group holds at least ``batch_size`` images (so its
    micro-batches can be full); a short remainder joins the last group. The grouping depends on the
    configuration alone, never on the number of ranks or on what a resumed run finds finished:
    the last bits of an input-gradient step can depend on which images share a micro-batch, so a
    fixed grouping is what makes a piece's numbers the same on any rank, in any job.
    """
    per_group = max(1, -(-batch_size // max(1, images_per_seed)))
    groups = [list(seeds[i:i + per_group]) for i in range(0, len(seeds), per_group)]
    if len(groups) > 1 and len(groups[-1]) * images_per_seed < batch_size:
        short = groups.pop()
        groups[-1] += short
    return groups


@dataclasses.dataclass(frozen=True)
class Block:
    """One piece of an interval's intermediary prototypes, one work queue: ``P[s, k, j]`` for the
    ``seeds`` and the target rows ``start <= k < stop`` (every ``j``)."""

    seeds: tuple[int, ...]
    start: int
    stop: int

    @property
    def rows(self) -> range:
        return range(self.start, self.stop)

    def images(self, num_classes: int) -> int:
        """How many images the block synthesises (its diagonal holds prototypes, made before)."""
        return len(self.seeds) * (self.stop - self.start) * (num_classes - 1)


# ``block_rows="auto"`` makes each block about this many micro-batches of images.
BLOCK_BATCHES = 4


def blocks(seeds: Sequence[int], num_classes: int, batch_size: int,
           block_rows: int | str = "auto") -> list[Block]:
    """The blocks of an interval's intermediary prototypes: fixed by the configuration alone.

    Seeds are grouped as :func:`seed_groups` groups them (``n^2`` images each); a group's rows are then
    cut into near-equal blocks of at most ``block_rows`` rows. ``auto`` chooses the rows that make
    a block about ``BLOCK_BATCHES`` micro-batches, so small grids stay whole (CIFAR-10, digits)
    and large ones are cut (CIFAR-100 at the CPU's batch of 128: 17 blocks of 5 or 6 rows per
    seed), and more ranks than seeds find work.
    """
    n = num_classes
    out = []
    for group in seed_groups(seeds, n * n, batch_size):
        rows = (-(-BLOCK_BATCHES * batch_size // (len(group) * n)) if block_rows == "auto"
                else int(block_rows))
        count = -(-n // max(1, min(rows, n)))
        edges = [n * i // count for i in range(count + 1)]
        out += [Block(tuple(group), a, b) for a, b in zip(edges, edges[1:])]
    return out


def claim(world: World, costs: Sequence[float], store: Any = None) -> Iterator[int]:
    """The work items (indices into ``costs``) this rank does, handed out as the ranks ask.

    Items go longest first, each to the first rank that asks for one: a counter in the process
    group's key-value store (``torch.distributed``'s store, which torchrun's ranks already share)
    gives every item to exactly one rank, so a rank whose items converge fast takes more and the
    ranks end together whatever each item really costs (image counts do not say: the steps an
    image takes depend on its target class). One process does every item, in the same order.
    Which rank does an item never changes its numbers: the items are fixed pieces of work.
    Without a store (a PyTorch that hides it) the items are dealt out in advance (:func:`share`).
    """
    order = _longest_first(costs)
    if not world.distributed:
        yield from order
        return
    store = store if store is not None else _default_store()
    if store is None:
        yield from share(costs, world.size)[world.rank]
        return
    key = f"toolkit/claim/{next(_CLAIMS)}"  # every rank makes the same calls, so the same keys
    while (position := store.add(key, 1) - 1) < len(order):
        yield order[position]


_CLAIMS = itertools.count()


def share(costs: Sequence[float], size: int) -> list[list[int]]:
    """Deal work items with ``costs`` out to ``size`` ranks in advance, balanced by cost (longest
    first, each to the least loaded rank; ties to the lower rank). Returns the item indices per
    rank, in increasing order; the same answer on every rank."""
    load = [0.0] * size
    shares: list[list[int]] = [[] for _ in range(size)]
    for item in _longest_first(costs):
        rank = min(range(size), key=lambda r: (load[r], r))
        load[rank] += costs[item]
        shares[rank].append(item)
    return [sorted(items) for items in shares]


def _longest_first(costs: Sequence[float]) -> list[int]:
    """Item indices by decreasing cost, ties in index order."""
    return sorted(range(len(costs)), key=lambda i: (-costs[i], i))


def _default_store() -> Any:
    """The store of the default process group, or None where this PyTorch does not expose it."""
    try:
        from torch.distributed.distributed_c10d import _get_default_store
    except ImportError:
        return None
    return _get_default_store()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _travels(error: BaseException) -> bool:
    """Whether ``error`` survives the pickling a broadcast puts it through."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 (any failure means: send a plain copy instead)
        return False
    return True
