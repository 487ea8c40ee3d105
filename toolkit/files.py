"""Writing files so that a reader sees the old file or the new one, never a torn one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from toolkit.errors import ToolkitError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, hint: str = "") -> Path:
    """Call ``write(tmp)`` for a temporary file beside ``path``, then rename it into place.

    The file gets the permissions of an ordinary new file (``mkstemp`` makes it private). A failed
    write (a full disk, say) leaves no file and raises a one-line ``ToolkitError``, followed by
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
        raise ToolkitError(f"could not write {path} ({exc.strerror or exc})"
                           + (f"; {hint}" if hint else "")) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
