"""Memory and time of writing C and R to a results file: in memory (``cosine``) vs streamed.

    python benchmarks/stream_write.py [--n 200] [--features 64]

Each way runs in its own fresh process, on the same made-up features (one interval, one seed):
``memory`` computes ``cosine`` and writes the file as ``--metrics cosine --save C,R`` does;
``stream`` writes it with ``stream_cosine`` as ``--metrics cosine_summaries --save C,R`` does.
Prints, per way, the peak of numpy/Python allocations while computing and writing (tracemalloc),
the growth of the process's peak resident memory over its size before (ru_maxrss, which also
counts HDF5's buffers), the wall time and the file size; then checks the two files hold the same
C and R.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc


def one(way: str, n: int, features: int, path: str) -> dict:
    import numpy as np

    from toolkit import results
    from toolkit_plugins.metrics import cosine, stream_cosine

    values = np.random.default_rng(0).normal(size=(1, 1, n, n, features)).astype(np.float32)
    ds = results.dataset_from_features(values)
    ds.attrs.update(results.provenance("{}"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    clock = time.perf_counter()
    if way == "memory":
        results.write_results(ds.assign(cosine(ds)), path, overwrite=True)
    else:
        results.write_results(ds, path, overwrite=True, streamed=stream_cosine(ds))
    seconds = time.perf_counter() - clock
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"way": way, "tracemalloc_peak_MB": round(peak / 1e6, 1),
            "maxrss_growth_MB": round(grown / 1e3, 1), "seconds": round(seconds, 2),
            "file_MB": round(os.path.getsize(path) / 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--way", choices=("memory", "stream"), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        print(json.dumps(one(args.way, args.n, args.features, args.path)))
        return
    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        print(f"n = {args.n}, {args.features} features, one interval and seed; "
              f"one float32 n^3 tensor = {args.n ** 3 * 4 / 1e6:.0f} MB")
        for way in ("memory", "stream"):
            paths[way] = os.path.join(folder, f"{way}.nc")
            done = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--features",
                                   str(args.features), "--way", way, "--path", paths[way]],
                                  check=True, capture_output=True, text=True)
            print(done.stdout.strip())
        import numpy as np
        import xarray as xr

        with xr.open_dataset(paths["memory"]) as memory, xr.open_dataset(paths["stream"]) as stream:
            for name in ("C", "R"):
                np.testing.assert_array_equal(memory[name].values, stream[name].values)
        print("C and R equal in both files")


if __name__ == "__main__":
    main()
