"""Speed-up of torchrun ranks over one process on the same synthesis work, and that their data agree.

    python benchmarks/ranks.py --checkpoints results/resnet18-digits-HASH.work
        [--ranks 2] [--block_rows auto,5,2] [--intervals 0.6,1] [--seeds 8] [--dataset digits]

For each ``--block_rows`` it runs ``python -m toolkit analyze`` and then ``torchrun --standalone
--nproc-per-node=RANKS -m toolkit analyze`` with the same options on the given weights (so no
training), one thread per process (``OMP_NUM_THREADS=1``, torchrun's own default), back to back,
and prints a markdown table of wall times (the whole command, start-up included), the synthesis
process-seconds the files record, and whether the two files hold identical data. Run it with
the machine otherwise idle: other load shows in the times, not in the data.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


import toolkit


def run(command: list[str], out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    clock = time.perf_counter()
    result = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - clock
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", required=True, help="a folder of interval-<t>.pt weights")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--block_rows", default="auto,5,2")
    parser.add_argument("--intervals", default="0.6,1")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--dataset", default="digits")
    args = parser.parse_args()
    analyze = ["-m", "toolkit", "analyze", "--dataset", args.dataset, "--checkpoints",
               args.checkpoints, "--intervals", args.intervals, "--seeds", str(args.seeds),
               "--noplots", "--noprogress"]
    print(f"| `--block_rows` | 1 process | {args.ranks} ranks | speed-up | synthesis process-s "
          "(1 / ranks) | identical data |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for rows in args.block_rows.split(","):
            options = [*analyze, "--block_rows", rows]
            one, many = Path(folder, f"one-{rows}.nc"), Path(folder, f"many-{rows}.nc")
            wall_one = run([sys.executable, *options], one)
            wall_many = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc-per-node={args.ranks}", *options[1:]], many)
            with toolkit.open_results(one) as a, toolkit.open_results(many) as b:
                same = a.load().drop_attrs().identical(b.load().drop_attrs())
                seconds = f"{a.attrs['time_synthesis_s']:.1f} / {b.attrs['time_synthesis_s']:.1f}"
            print(f"| {rows} | {wall_one:.1f} s | {wall_many:.1f} s | {wall_one / wall_many:.2f}x "
                  f"| {seconds} | {'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
