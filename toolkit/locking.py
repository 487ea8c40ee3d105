"""The lock on a run's work directory: one run at a time, a killed run's lock taken over.

The lock is an ``flock`` on the file ``lock`` in the directory, which holds its holder's process id
and host. The system drops an ``flock`` when its process ends however it ends, so a run killed with
``kill -9`` leaves nothing that blocks the next one; a holder that is ending (killed, a zombie, its
memory being released) is waited for a moment, a live one refused at once, naming it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path
from typing import Iterator

from toolkit.errors import UsageError

LOCK_FILE = "lock"  # held (flock) by the process running in the directory; it holds its pid


def check_free(path: Path) -> None:
    """Refuse at once a directory another live run holds (:func:`locked`), before this run loads
    its data; the run takes the lock itself later, which settles any race."""
    try:
        import fcntl
    except ImportError:
        return
    lock = path / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:  # no lock file: nobody holds it
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        if not _ending(lock):
            raise UsageError(_in_use(path, lock)) from None
    finally:
        os.close(fd)


def _in_use(path: Path, lock: Path) -> str:
    return (f"{path} is in use by another run ({_holder(lock)}); wait for it to finish or stop it, "
            "or choose another --out")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the directory ``path`` for this process: a second run on it is refused at once
    (``UsageError`` naming the holder's process id), before it does any work.

    The lock is an ``flock`` on ``lock`` in the directory, which the system drops when its
    process ends however it ends, so a lock left by a killed run is free and taken over. The
    file goes at the end, and the folder with it when nothing else is in it. Where the system
    has no ``flock`` (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK_FILE
    ending_until = None
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            # A holder that was just killed keeps its lock until the system has ended it (and a
            # killed torchrun's ranks end a moment after it): wait for that, never for a live run.
            # A lock nobody has signed is a moment's: another run's check_free probe, or a
            # holder about to write its id.
            now = time.monotonic()
            grace = ENDING_GRACE_S if _ending(lock) else 0.0 if _signed(lock) else UNSIGNED_GRACE_S
            if now < (ending_until := ending_until or now + grace):
                time.sleep(0.05)
                continue
            raise UsageError(_in_use(path, lock)) from None
        try:  # the file we locked is still the one named lock (the last holder may remove it)
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)
        with contextlib.suppress(OSError):
            path.rmdir()  # only when empty


# How long a lock whose holder is ending (dead, a zombie, or being killed) may take to free.
ENDING_GRACE_S = 30.0
UNSIGNED_GRACE_S = 1.0  # and a lock whose holder has not written its id (a probe's, or just taken)
PF_EXITING = 0x4  # Linux's per-task flag, set once a process has begun to exit (/proc/PID/stat)


def _ending(lock: Path) -> bool:
    """Whether the process that holds ``lock`` on this host is gone or on its way out: no such
    process, a zombie, one with SIGKILL pending, or one already exiting (its SIGKILL taken, its
    memory and files being released: a large process can take a moment)."""
    try:
        pid, _, host = lock.read_text().strip().partition(" ")
        pid = int(pid)
    except (OSError, ValueError):
        return False
    if host and host != socket.gethostname():
        return False
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()  # after the name
    except FileNotFoundError:
        return True  # already gone
    except OSError:
        return False  # no /proc here: never guess
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    pending = int(fields.get("ShdPnd", "0"), 16) | int(fields.get("SigPnd", "0"), 16)
    exiting = len(stat) > 6 and stat[6].isdigit() and int(stat[6]) & PF_EXITING
    return (stat[:1] in (["Z"], ["X"])) or bool(pending & (1 << (signal.SIGKILL - 1))) or bool(exiting)


def _signed(lock: Path) -> bool:
    """Whether ``lock`` names its holder (:func:`locked` writes its id just after locking)."""
    try:
        return bool(lock.read_text().strip())
    except OSError:
        return False


def _holder(lock: Path) -> str:
    """Who holds ``lock``: "process <pid> on <host>" as its holder wrote it (just after locking)."""
    for _ in range(50):
        with contextlib.suppress(OSError):
            pid, _, host = lock.read_text().strip().partition(" ")
            if pid:
                return f"process {pid}" + (f" on {host}" if host else "")
        time.sleep(0.02)
    return "a process that has not said its id"
