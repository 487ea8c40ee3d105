"""Figures of a results file: the machinery that draws the figures plugins register.

Figures are registered by plugins (``register_figures``, a :class:`toolkit.FigureSpec`); the
built-in ones live in ``toolkit_plugins.figures``. Every figure is drawn from the file alone
(``toolkit.open_results`` or ``xarray.open_dataset``), on its own ``matplotlib.figure.Figure`` (no
pyplot state, no window), in the Okabe-Ito colour-blind-safe palette, with a title naming model,
dataset and seeds; the helpers here (``new_figure``, ``need``, ``pick_seed``, ``mosaic``, ...) are
for the figures' use. A figure whose variables a file lacks raises :class:`MissingData`, a
:class:`UsageError` that says what is missing and how to get it.

``plot`` draws them all into a folder; ``toolkit.report`` embeds them in one HTML page.
"""
from __future__ import annotations

import inspect
import io
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from toolkit.contracts import FigureSpec
from toolkit.errors import UsageError
from toolkit.files import atomic_write, check_new_folder, created_folder

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour-vision
# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour-vision
# deficiency. Every figure draws from this palette.
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9",
             "bluish_green": "#009E73", "yellow": "#F0E442", "blue": "#0072B2",
             "vermillion": "#D55E00", "reddish_purple": "#CC79A7"}
COLOURS = {"accuracy": OKABE_ITO["bluish_green"], "unconverged": OKABE_ITO["orange"],
           "highlight": OKABE_ITO["orange"], "reference": OKABE_ITO["black"]}
HEATMAP_CMAP = "viridis"  # perceptually uniform and colour-blind safe
FORMATS = ("png", "pdf", "svg")
MAX_CLASSES = 20  # image grids beyond this many classes show an evenly spaced subset


class MissingData(UsageError):
    """A figure needs variables that this results file does not hold."""


def run_title(ds: xr.Dataset) -> str:
    """``resnet18 on digits, 5 seeds (0-4)``: what every figure's title says about the run."""
    seeds = [int(s) for s in ds["seed"].values] if "seed" in ds.coords else []
    if len(seeds) == 1:
        which = f"seed {seeds[0]}"
    elif seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        which = f"{len(seeds)} seeds ({seeds[0]}-{seeds[-1]})"
    else:
        which = f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"
    return f"{ds.attrs.get('model', '?')} on {ds.attrs.get('dataset', '?')}, {which}"


def need(ds: xr.Dataset, names: Iterable[str], how: str) -> None:
    missing = [name for name in names if name not in ds.variables]
    if missing:
        raise MissingData(f"this file lacks {', '.join(missing)}; {how}")


def percent(ds: xr.Dataset) -> np.ndarray:
    return ds["interval"].values * 100


def interval_axis(ax, ds: xr.Dataset) -> None:
    x = percent(ds)
    ax.set_xlabel("training completed (%)")
    ax.set_xticks(x, [f"{v:g}" for v in x])
    pad = max(2.0, (x.max() - x.min()) * 0.05)
    ax.set_xlim(x.min() - pad, x.max() + pad)
    ax.grid(True, alpha=0.3)


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def legend_above(ax, title: str | None = None, ncols: int = 2) -> None:
    """The legend between title and axes, where it can hide no data."""
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncols=ncols, fontsize=8, frameon=False,
              title=title, title_fontsize=8, alignment="left", borderaxespad=0.0)


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return None
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def pick_seed(ds: xr.Dataset, seed: int | None) -> int:
    seeds = [int(s) for s in ds["seed"].values]
    if seed is None:
        return seeds[0]
    if int(seed) not in seeds:
        raise UsageError(f"seed {seed} is not in this file; it holds seeds {', '.join(map(str, seeds))}")
    return int(seed)


def pick_interval(ds: xr.Dataset, interval: float | None) -> float:
    values = [float(t) for t in ds["interval"].values]
    if interval is None:
        return values[-1]
    close = [t for t in values if abs(t - float(interval)) < 1e-9]
    if not close:
        raise UsageError(f"interval {interval:g} is not in this file; it holds "
                         + ", ".join(f"{t:g}" for t in values))
    return close[0]


def pick_classes(ds: xr.Dataset, classes: Sequence[int | str] | None,
                  max_classes: int = MAX_CLASSES) -> np.ndarray:
    """Class indices to show: those asked for (indices or names), else all, else an evenly spaced
    subset of ``max_classes``."""
    names = [str(c) for c in ds["class_name"].values]
    n = len(names)
    if classes is None:
        if n <= max_classes:
            return np.arange(n)
        return np.unique(np.linspace(0, n - 1, max_classes).round().astype(int))
    picked = []
    for c in classes:
        if isinstance(c, str) and c in names:
            picked.append(names.index(c))
        elif not isinstance(c, bool) and str(c).lstrip("-").isdigit() and 0 <= int(c) < n:
            picked.append(int(c))
        else:
            raise UsageError(f"class {c!r} is not in this file; give indices 0-{n - 1} or names "
                             f"like {', '.join(names[:3])}")
    return np.asarray(picked)


def subset_note(shown: np.ndarray, n: int) -> str:
    return "" if len(shown) == n else f", {len(shown)} of {n} classes shown"


def mosaic(tiles: np.ndarray, pad: int | None = None, fill: float = 1.0) -> np.ndarray:
    """One image from ``tiles`` ``(rows, cols, channel, y, x)``, separated by ``pad`` pixels of
    ``fill``: ``(H, W)`` for one channel, ``(H, W, 3)`` for three; others show their mean."""
    rows, cols, channels, h, w = tiles.shape
    if channels not in (1, 3):
        tiles, channels = tiles.mean(2, keepdims=True), 1
    pad = max(1, h // 10) if pad is None else pad
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, channels), fill, np.float32)
    for r in range(rows):
        for c in range(cols):
            out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = \
                np.moveaxis(tiles[r, c], 0, -1)
    return out[..., 0] if channels == 1 else out


def tile_centres(count: int, size: int, pad: int) -> np.ndarray:
    return np.arange(count) * (size + pad) + (size - 1) / 2


def show_mosaic(ax, tiles: np.ndarray) -> int:
    pad = max(1, tiles.shape[-2] // 10)
    image = mosaic(tiles, pad)
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1,
              interpolation="nearest")
    for side in ax.spines.values():
        side.set_visible(False)
    ax.tick_params(length=0)
    return pad


def cells(ds: xr.Dataset, name: str, at: dict, shown) -> np.ndarray:
    """Variable ``name`` of a (k, j) grid at one interval and seed, for the classes ``shown``,
    as an array ``(k, j, ...)``."""
    return ds[name].sel(at).isel(k=shown, j=shown).transpose("k", "j", ...).values


def registered_figures() -> dict[str, FigureSpec]:
    """Every figure the loaded plugins register, by name, in registration order."""
    from toolkit.plugins import get_registry

    return {reg.name: reg.obj for reg in get_registry("figure").in_order()}


def __getattr__(name: str) -> Any:
    if name == "FIGURES":  # the registered figures, as this module once listed them
        return registered_figures()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def plain_text():
    """A context in which matplotlib draws every text as given, never as mathtext: labels come
    from data (class, model, dataset and file names), where a "$" is a "$", not a parse error."""
    return matplotlib.rc_context({"text.parse_math": False})


def render(ds: xr.Dataset, name: str, **options: Any) -> Figure:
    """Draw figure ``name`` of ``ds``; options a figure does not take are ignored
    (``seed`` and ``classes`` go to prototypes and grid, ``interval`` to grid)."""
    from toolkit.plugins import PluginError, blamed_on, get_registry

    registration = get_registry("figure").get(name)
    accepted = inspect.signature(registration.obj.draw).parameters
    with blamed_on(registration, "failed to draw"), plain_text():
        fig = registration.obj.draw(ds, **{k: v for k, v in options.items()
                                           if k in accepted and v is not None})
    if not isinstance(fig, Figure):
        raise PluginError(f"figure {name!r} (plugin {registration.plugin!r}) returned "
                          f"{type(fig).__name__}, not a matplotlib Figure")
    return fig


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """``"png,pdf"`` or ``("png", "pdf")`` -> a tuple of known formats; ``UsageError`` otherwise."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen = tuple(dict.fromkeys(str(f).strip().lower().lstrip(".") for f in items if str(f).strip()))
    unknown = [f for f in chosen if f not in FORMATS]
    if not chosen or unknown:
        raise UsageError(f"unknown --format {', '.join(unknown) or repr(formats)}; "
                         f"allowed: {', '.join(FORMATS)} (comma-separated)")
    return chosen


def parse_figures(figures: str | Sequence[str] | None) -> tuple[str, ...]:
    known = registered_figures()
    if figures is None:
        return tuple(known)
    items = figures.split(",") if isinstance(figures, str) else list(figures)
    chosen = tuple(dict.fromkeys(str(f).strip() for f in items if str(f).strip()))
    unknown = [f for f in chosen if f not in known]
    if not chosen or unknown:
        raise UsageError(f"unknown figure {', '.join(unknown) or repr(figures)}; "
                         f"allowed: {', '.join(known)}")
    return chosen


def default_folder(results: str | os.PathLike) -> Path:
    """``run.nc`` -> ``run.figures/``, beside the results file."""
    return Path(results).with_suffix(".figures")


def check_folder(out: str | os.PathLike, formats: Sequence[str] = ("png",),
                 figures: Sequence[str] | None = None, overwrite: bool = False) -> None:
    """``UsageError`` unless the figures could be written into ``out`` without replacing a file
    (unless ``overwrite``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"figure folder {str(out)!r} is a file; choose a folder with --out")
    check_new_folder(out.parent)
    if out.is_dir() and not overwrite:
        clash = [f"{name}.{fmt}" for name in (figures or registered_figures()) for fmt in formats
                 if (out / f"{name}.{fmt}").exists()]
        if clash:
            raise UsageError(f"{out} already holds figures ({', '.join(clash[:3])}"
                             f"{', ...' if len(clash) > 3 else ''}); pass --overwrite to replace "
                             "them, or choose another --out")


def as_dataset(results: xr.Dataset | str | os.PathLike) -> tuple[xr.Dataset, Path | None]:
    """A validated results Dataset and the path it came from (None for a Dataset)."""
    from toolkit.results import open_results, validate

    if isinstance(results, xr.Dataset):
        return validate(results), None
    return open_results(results), Path(results)


def plot(results: xr.Dataset | str | os.PathLike, out: str | os.PathLike | None = None,
         formats: str | Sequence[str] = ("png",), figures: str | Sequence[str] | None = None, *,
         overwrite: bool = False, dpi: int = 150, seed: int | None = None,
         interval: float | None = None, classes: Sequence[int | str] | None = None,
         on_skip: Callable[[str, str], None] | None = None) -> list[Path]:
    """Draw the figures of a results file (or Dataset) into a folder; return the files written.

    Args:
        results: a results file (``.nc``) or Dataset.
        out: folder for the figures; default beside the file: ``run.nc`` -> ``run.figures/``.
        formats: file formats, any of ``FORMATS`` (``"png,pdf"`` or a sequence).
        figures: which of the registered figures to draw (default all; see
            :func:`registered_figures`).
        overwrite: replace figures already in ``out``; without it, nothing is written if any is there.
        dpi: resolution of raster formats.
        seed, interval, classes: which seed, interval and classes the image figures show
            (default: the first seed, the last interval, all classes up to ``MAX_CLASSES``).
        on_skip: called with (figure name, reason) for a figure this file lacks the data for;
            default: a warning.

    Raises:
        UsageError: a missing or foreign file, an unknown format or figure, a seed or interval
            not in the file, figures already in ``out``.
    """
    formats, names = parse_formats(formats), parse_figures(figures)
    ds, path = as_dataset(results)
    try:
        if out is None:
            if path is None:
                raise UsageError("give out= (a folder) to plot a Dataset that has no file")
            out = default_folder(path)
        out = Path(out)
        check_folder(out, formats, names, overwrite)
        # Bad choices fail before anything is drawn or written.
        if seed is not None:
            pick_seed(ds, seed)
        if interval is not None:
            pick_interval(ds, interval)
        if classes is not None:
            pick_classes(ds, classes)
        options = dict(seed=seed, interval=interval, classes=classes)
        # All or nothing: every figure is drawn and saved in a staging folder beside ``out``, and
        # moved in only once all of them are; a failure leaves ``out`` as it was.
        with created_folder(out.parent):  # created as for analyze; removed again if this fails
            return _draw_into(out, ds, names, formats, figures, options, dpi, on_skip)
    finally:
        if path is not None:
            ds.close()


def _draw_into(out: Path, ds: xr.Dataset, names, formats, figures, options, dpi, on_skip) -> list[Path]:
    """Draw every figure into a staging folder beside ``out``, then move them in together."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        staged = []
        known = registered_figures()
        for name in names:
            try:
                fig = render(ds, name, **options)
            except MissingData as missing:
                if not (figures is None and known[name].optional):
                    (on_skip or _warn_skip)(name, str(missing))
                continue
            for fmt in formats:
                staged.append(save_figure(fig, staging / f"{name}.{fmt}", dpi).name)
        out.mkdir(exist_ok=True)
        for file in staged:
            os.replace(staging / file, out / file)
        return [out / file for file in staged]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _warn_skip(name: str, reason: str) -> None:
    warnings.warn(f"figure {name!r} skipped: {reason}", stacklevel=3)


def save_figure(fig: Figure, path: Path, dpi: int) -> Path:
    """Save atomically, so an interrupted run leaves no half-written figure."""
    kind = path.suffix[1:]
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=kind,
                                                      metadata=_metadata(kind)))


def _metadata(fmt: str) -> dict[str, Any] | None:
    # No creation dates in the files, so the same results give the same figure bytes.
    return {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(fmt)


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (for embedding in a page)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
