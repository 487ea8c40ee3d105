"""Draw "how class prototypes train" from a results file with nothing but xarray and matplotlib.

    python examples/plot_from_xarray.py RESULTS.nc [SEED]      # writes RESULTS-prototypes.png

The file is all a reader needs: ``noise`` holds the uniform noise each seed's prototypes start
from, ``prototypes`` the class prototype synthesised at each training interval, both as pixels in
[0, 1] (stored as uint8 with a CF scale factor, which xarray undoes on reading). ``toolkit plot``
draws this figure and seven others; this script shows how little it takes.
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import xarray as xr  # noqa: E402

path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results/example-digits.nc")
ds = xr.open_dataset(path)
seed = int(sys.argv[2]) if len(sys.argv) > 2 else int(ds.seed[0])

# One row per class: the starting noise, then the prototype at each interval, all from one seed.
columns = [ds.noise.sel(seed=seed)] + [ds.prototypes.sel(seed=seed, interval=t) for t in ds.interval]
titles = ["noise"] + [f"{float(t):.0%}" for t in ds.interval]
classes = ds.sizes["class"]
fig, axes = plt.subplots(classes, len(columns), figsize=(1.0 * len(columns) + 1, 1.0 * classes + 1),
                         squeeze=False)
for col, (images, title) in enumerate(zip(columns, titles)):
    for row in range(classes):
        ax = axes[row, col]
        image = images.isel({"class": row}).transpose("y", "x", "channel").values
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(image)
        ax.set_xticks([])
        ax.set_yticks([])
        if row == 0:
            ax.set_title(title, fontsize=9)
        if col == 0:
            ax.set_ylabel(str(ds.class_name.values[row]), rotation=0, ha="right", va="center")
fig.suptitle(f"How class prototypes train: {ds.attrs['model']} on {ds.attrs['dataset']}, seed {seed}")
fig.tight_layout()
out = path.with_name(f"{path.stem}-prototypes.png")
fig.savefig(out, dpi=120)
print(f"figure: {out}")
