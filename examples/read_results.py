"""Run a small study from Python, then read its file with nothing but xarray and matplotlib.

    python examples/read_results.py            # about a minute on a laptop CPU

The results file is all a reader needs: every number, its dimensions and how it was made.
"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import xarray as xr  # noqa: E402

import toolkit  # noqa: E402

path = Path("results/example-digits.nc")
path.parent.mkdir(exist_ok=True)
if not path.exists():
    toolkit.analyze(dataset="digits", intervals=[0.5, 1.0], seeds=2, out=path, progress=True)

ds = xr.open_dataset(path)
print(ds)
print("configuration:", json.loads(ds.attrs["config"]))

# The poster's figure: mean C and R per interval, with the spread of the per-seed means.
fig, ax = plt.subplots(figsize=(5, 3.5))
for name, colour in (("C", "#0072B2"), ("R", "#D55E00")):
    seeds = ds[f"{name}_seed_mean"]
    ax.errorbar(ds.interval * 100, ds[f"{name}_mean"], yerr=seeds.std("seed"), color=colour,
                marker="o", capsize=3, label=f"{name} ({ds[name].attrs['long_name'].split(' (')[0]})")
ax.set(xlabel="training completed (%)", ylabel="mean dissimilarity (1 - cos)",
       title=f"{ds.attrs['model']} on {ds.attrs['dataset']}, {ds.sizes['seed']} seeds")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(path.with_suffix(".png"), dpi=120)
print(f"figure: {path.with_suffix('.png')}")
