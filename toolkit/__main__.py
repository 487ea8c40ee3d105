"""``python -m toolkit``: the Fire command line, with one-line errors and exit status 2 (1 for a
run that failed on the way, 130 for Ctrl-C). The arguments are checked, and ``--help`` answered,
before Fire runs anything (:func:`toolkit.arguments.prepare`)."""
from __future__ import annotations

import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    import fire

    from toolkit.arguments import prepare
    from toolkit.cli import Toolkit
    from toolkit.errors import ToolkitError
    from toolkit.hardware import keep_memory_mapped

    keep_memory_mapped()  # this process is the toolkit's: keep what training frees mapped
    try:
        argv, help_text = prepare(list(sys.argv[1:] if argv is None else argv))
        if help_text is not None:
            print(help_text)
            return 0
        with warnings.catch_warnings():
            warnings.showwarning = _one_line  # a skipped plugin, an odd dataset file: one line each
            fire.Fire(Toolkit, command=argv, name="toolkit")
    except ToolkitError as exc:
        print(f"toolkit: error: {_rank()}{exc}", file=sys.stderr)
        return getattr(exc, "exit_status", 2)
    except KeyboardInterrupt:
        print("toolkit: interrupted; no results file was written (rerun the same command to resume "
              "from the work directory)", file=sys.stderr)
        return 130
    return 0


def _rank() -> str:
    """``rank 1: `` in a torchrun job of several processes (rank 0 speaks plainly)."""
    import os

    rank, size = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    return f"rank {rank} of {size}: " if size not in ("", "1") and rank != "0" else ""


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"toolkit: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
