"""Writing files so that a reader sees the old file or the new one, never a torn one."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from toolkit.errors import UsageError, WriteError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, hint: str = "") -> Path:
    """Call ``write(tmp)`` for a temporary file beside ``path``, then rename it into place.

    The file gets the permissions of an ordinary new file (``mkstemp`` makes it private). A failed
    write (a full disk, say) leaves no file and raises a one-line ``WriteError``, followed by
    ``hint`` when given.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(Path(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(f"could not write {path} ({exc.strerror or exc})"
                           + (f"; {hint}" if hint else "")) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_output(path: Path, suffixes: tuple[str, ...], kind: str, overwrite: bool = False,
                 folder_may_be_missing: bool = False) -> None:
    """Raise ``UsageError`` unless a new file named ``path`` (``--out``) could be written.

    ``suffixes`` are the allowed endings (lower case), ``kind`` names such a file in messages
    ("a .nc file"). With ``folder_may_be_missing``, a missing folder passes (it will be created).
    """
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"--out must name {kind}; got {str(path)!r}")
    if folder_may_be_missing and not path.parent.exists():
        check_new_folder(path.parent)
        return
    if not path.parent.is_dir():
        raise UsageError(f"--out folder {str(path.parent)!r} does not exist; create it or choose another")
    if path.is_dir():
        raise UsageError(f"--out {str(path)!r} is a folder; name {kind}")
    if path.exists() and not overwrite:
        raise UsageError(f"{path} already exists; pass --overwrite to replace it, or choose another --out")
    try:  # a real probe: permission bits do not stop root, a read-only filesystem does
        fd, probe = tempfile.mkstemp(prefix=".toolkit-probe-", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--out folder {str(path.parent)!r} is not writable ({exc.strerror})") from None


def check_new_folder(folder: Path) -> None:
    """``UsageError`` unless the missing ``folder`` (an ``--out`` folder) could be created: it must
    lie below an existing, writable folder."""
    if folder.exists():
        return
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out folder {str(folder)!r} cannot be created: {str(parent)!r} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out folder {str(folder)!r} cannot be created: {str(parent)!r} is not writable")


@contextlib.contextmanager
def created_folder(folder: Path) -> Iterator[Path]:
    """``folder`` with its missing parents created for the block; those it created are removed
    again if the block fails, so a refused or failed command leaves no empty folder behind."""
    folder = Path(folder)
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    if missing:
        missing[0].mkdir(parents=True, exist_ok=True)
    try:
        yield missing[0] if missing else folder
    except BaseException:
        for made in missing:  # the deepest first; one that is no longer empty stays
            try:
                made.rmdir()
            except OSError:
                break
        raise


def umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
