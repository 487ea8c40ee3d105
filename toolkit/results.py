"""The results file: one ``xarray.Dataset`` per study, written as compressed netCDF4.

This module builds, writes, reads and checks it; what it holds is :mod:`toolkit.schema` (the
core's variables, and those the plugins declare; DESIGN.md section 2, docs/results-file.md).
Dimensions: ``interval`` (coordinate: the training fraction), ``seed``, ``k`` (target class),
``j`` (origin class), ``i`` (the class compared with), ``feature`` and ``class`` (with
``class_name``). ``P[k, j]`` is the image started at class ``j``'s prototype and pushed into class
``k``; ``P[k, k]`` is class ``k``'s prototype.

Images (optional variables, so files without them are still schema version 1): ``noise``
``(seed, class, channel, y, x)``, the uniform noise each seed's prototypes start from (the same at
every interval; also ``torch.rand((n, C, H, W), generator=torch.Generator().manual_seed(seed))``);
``prototypes`` ``(interval, seed, class, channel, y, x)``, each class prototype ``p_c = P[c, c]``;
and, when the study saves images, the whole grid ``P`` ``(interval, seed, k, j, channel, y, x)``.
Pixels live in [0, 1]; on disk they are uint8 with CF ``scale_factor = 1/255`` (pixel =
round(255 x) / 255, an error of at most 1/510), so any CF reader, ``xarray.open_dataset`` among
them, reads them back as float32 in [0, 1]. In memory they hold those quantised values already,
so writing and reading a Dataset changes nothing.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import xarray as xr

from toolkit import schema
from toolkit.errors import UsageError, WriteError
from toolkit.files import check_output, umask
from toolkit.limits import declare, env_limit, how_to_raise

SCHEMA_VERSION = 1
CONVENTIONS = "CF-1.8"

GRID, PAIRS, PIXELS = schema.GRID, schema.PAIRS, schema.PIXELS

# The core's variables (every results file holds them) and images (optional), with their dims; the
# variables plugins add are declared by them (toolkit.schema.declared) and checked by validate.
REQUIRED = {name: v.dims for name, v in schema.REQUIRED.items()}
IMAGES = {name: v.dims for name, v in schema.IMAGES.items()}
IMAGE_ENCODING = {"dtype": "uint8", "scale_factor": np.float32(1 / 255), "_FillValue": None}

# The per-image records of every grid image, as a synthesizer returns them (SynthesisResult).
RECORDS = ("steps", "loss", "converged", "predicted", "confidence")
RECORD_ATTRS = {name: dict(schema.REQUIRED[name].attrs)
                for name in ("features", *RECORDS, "test_accuracy", "train_size")}


def __getattr__(name: str) -> Any:
    # The variables of the default metrics, as this module listed them before plugins declared
    # their own (kept for code that still reads it): their dims, from the registry.
    if name == "FROM_METRICS":
        return {n: d.variable.dims for n, d in schema.declared().items()
                if d.kind == "metric" and d.owner in ("cosine", "zscore")}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Attributes that say how fast a run went (set by ``toolkit.analyze``; files written before them
# lack them, and readers must cope).
SPEED_ATTRS = {
    "time_training_s": "wall time spent training, in seconds (all intervals)",
    "time_synthesis_s": "time spent synthesising the prototype grids, in seconds (under torchrun, "
                        "summed over the ranks, like image_steps)",
    "time_features_s": "wall time spent extracting penultimate features, in seconds",
    "time_metrics_s": "wall time spent in the metric plugins, in seconds",
    "time_probes_s": "wall time spent in plugin probes (register_probes), in seconds",
    "image_steps": "input-gradient steps taken, summed over every image of every grid",
    "precision": "fp32, bf16 (autocast: training and synthesis) or bf16-synthesis (fp32 training)",
    "compile": "1 if torch.compile was switched on for synthesis (asked for, or auto's choice: "
               "compile_reason), else 0; even then the built-in synthesizers run batches under 16 "
               "images eagerly, so a run whose batches all stay under 16 compiles nothing",
    "synthesis_batch_size": "micro-batch size of the synthesis work queue",
}


def speed_attrs(*, time_training_s: float, time_synthesis_s: float, time_features_s: float,
                time_metrics_s: float, image_steps: int, precision: str, compile: bool,
                synthesis_batch_size: int, time_probes_s: float = 0.0) -> dict[str, Any]:
    """The ``SPEED_ATTRS`` of one run, in netCDF-friendly types."""
    return {"time_training_s": round(float(time_training_s), 3),
            "time_synthesis_s": round(float(time_synthesis_s), 3),
            "time_features_s": round(float(time_features_s), 3),
            "time_metrics_s": round(float(time_metrics_s), 3),
            "time_probes_s": round(float(time_probes_s), 3),
            "image_steps": int(image_steps), "precision": str(precision), "compile": int(compile),
            "synthesis_batch_size": int(synthesis_batch_size)}


def build_dataset(*, intervals: Sequence[float], seeds: Sequence[int], class_names: Sequence[str],
                  features: np.ndarray, records: Mapping[str, np.ndarray],
                  test_accuracy: Sequence[float], train_size: Sequence[int],
                  images: Mapping[str, np.ndarray] | None = None) -> xr.Dataset:
    """Assemble the per-image arrays of a study (before metrics) into a labelled Dataset.

    ``features`` is ``(interval, seed, k, j, feature)``; each record ``(interval, seed, k, j)``.
    ``images`` may hold ``noise``, ``prototypes`` and ``P`` with the dims of ``IMAGES``, as uint8
    (0-255) or floats in [0, 1]; they are stored quantised to 1/255.
    """
    n = len(class_names)
    images = dict(images or {})
    known = schema.images() if images else {}
    unknown = sorted(set(images) - set(known))
    if unknown:
        raise ValueError(f"unknown image variable(s) {', '.join(unknown)}; known: {', '.join(known)}")
    pixels = {name: (known[name].dims, quantize(value), dict(known[name].attrs))
              for name, value in images.items()}
    shape = next(iter(pixels.values()))[1].shape[-3:] if pixels else None
    grid = {name: (GRID, np.asarray(records[name]), RECORD_ATTRS[name])
            for name in RECORDS}
    return xr.Dataset(
        data_vars={
            "features": ((*GRID, "feature"), np.asarray(features, dtype=np.float32),
                         RECORD_ATTRS["features"]),
            **grid,
            "test_accuracy": ("interval", np.asarray(test_accuracy, dtype=np.float64),
                              RECORD_ATTRS["test_accuracy"]),
            "train_size": ("interval", np.asarray(train_size, dtype=np.int64),
                           RECORD_ATTRS["train_size"]),
            "class_name": ("class", np.asarray(list(class_names), dtype=object),
                           dict(schema.REQUIRED["class_name"].attrs)),
            **pixels,
        },
        coords={
            "interval": ("interval", np.asarray(intervals, dtype=np.float64),
                         dict(long_name="fraction of training completed", units="1")),
            "seed": ("seed", np.asarray(seeds, dtype=np.int64),
                     dict(long_name="seed of the prototypes' initial noise")),
            "k": ("k", np.arange(n), dict(long_name="target class")),
            "j": ("j", np.arange(n), dict(long_name="origin class")),
            "feature": ("feature", np.arange(features.shape[-1]), dict(long_name="feature index")),
            "class": ("class", np.arange(n), dict(long_name="class index")),
            **({} if shape is None else {
                "channel": ("channel", np.arange(shape[0]), dict(long_name="colour channel")),
                "y": ("y", np.arange(shape[1]), dict(long_name="pixel row")),
                "x": ("x", np.arange(shape[2]), dict(long_name="pixel column")),
            }),
        },
    )


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Pixels in [0, 1] as stored on disk: ``round(255 x)`` as uint8 (uint8 passes through)."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels
    return np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)


def quantize(pixels: np.ndarray) -> np.ndarray:
    """The float32 values a reader of the file gets back for ``pixels`` (uint8, or floats in
    [0, 1]): ``to_uint8(pixels) * float32(1/255)``, exactly as CF decoding computes them."""
    return to_uint8(pixels).astype(np.float32) * IMAGE_ENCODING["scale_factor"]


def dataset_from_features(features: np.ndarray) -> xr.Dataset:
    """A results dataset around made-up ``features`` (interval, seed, k, j, feature), with neutral
    records: for trying metrics on, before training or in tests."""
    t, s, n, _, _ = features.shape
    records = {name: np.zeros((t, s, n, n)) for name in ("steps", "loss", "confidence")}
    records["converged"] = np.ones((t, s, n, n), bool)
    records["predicted"] = np.broadcast_to(np.arange(n)[:, None], (t, s, n, n))
    return build_dataset(intervals=np.linspace(0.5, 1, t), seeds=range(s),
                         class_names=[str(c) for c in range(n)], features=features,
                         records=records, test_accuracy=[0.5] * t, train_size=[10] * t)


def provenance(config_json: str, **extra: Any) -> dict[str, Any]:
    """The attributes that say where a results file came from."""
    from toolkit.version import __version__

    versions = {"python": platform.python_version()}
    for module in ("torch", "torchvision", "timm", "numpy", "xarray", "netCDF4", "pluggy"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:  # pragma: no cover - all are dependencies
            versions[module] = None
    return {
        "Conventions": CONVENTIONS,
        "title": "Prototype dissimilarities of an image classifier, probed without data",
        "toolkit_schema_version": SCHEMA_VERSION,
        "toolkit_version": __version__,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config_json,
        "library_versions": json.dumps(versions, sort_keys=True),
        **extra,
    }


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    # zlib only where it pays: numbers and booleans, not strings (as ArviZ does). Images go to
    # disk as uint8 whatever encoding a variable carries (it is lost by many operations anyway).
    images = schema.images()
    return {name: {"zlib": True, "complevel": 4, **(IMAGE_ENCODING if name in images else {})}
            for name, var in ds.variables.items() if var.dtype.kind in "biuf"}


@dataclasses.dataclass(frozen=True)
class Streamed:
    """A ``PAIRS`` variable (interval, seed, k, j, i) too big to hold in memory, which
    ``write_results`` computes and writes block by block (a metric hands it over with
    ``streams=``; see ``cosine_summaries``).

    ``block(t, s, start, stop)`` returns the float32 values of interval index ``t``, seed index
    ``s`` and indices ``start:stop`` along ``along`` ("k" or "j"), with dims (k, j, i).
    """

    along: str
    block: Callable[[int, int, int, int], np.ndarray]
    attrs: Mapping[str, Any]

    def __post_init__(self) -> None:
        if self.along not in ("k", "j"):
            raise ValueError(f"a streamed variable is cut along 'k' or 'j'; got {self.along!r}")


# Values in one chunk of a streamed variable on disk, and in one block computed for it (float32:
# 4 MiB a chunk). A chunk is whole (k, j, i) planes cut along the variable's ``along`` dim.
CHUNK_VALUES = 1 << 20


def _write_streamed(path: str | os.PathLike, ds: xr.Dataset, streamed: Mapping[str, Streamed]) -> None:
    """Append ``streamed`` to the netCDF file ``path`` (just written from ``ds``): compressed
    float32 chunked as their blocks, filled one block at a time, so memory holds one block."""
    import netCDF4

    n = ds.sizes["k"]
    width = max(1, min(n, CHUNK_VALUES // (n * n)))
    with netCDF4.Dataset(path, "a") as nc:
        if "i" not in nc.variables:  # the coordinate ``cosine`` gives C and R: i runs over classes
            nc.createDimension("i", n)
            nc.createVariable("i", "i8", ("i",), zlib=True, complevel=4)[:] = ds["k"].values
        for name, variable in streamed.items():
            axis = PAIRS.index(variable.along)
            chunks = [1, 1, n, n, n]
            chunks[axis] = width
            out = nc.createVariable(name, "f4", PAIRS, zlib=True, complevel=4, chunksizes=chunks,
                                    fill_value=np.float32(np.nan))  # as xarray writes float32
            out.set_var_chunk_cache(size=0)  # whole chunks, written once: no cache to hold them
            out.setncatts(dict(variable.attrs))
            for t in range(ds.sizes["interval"]):
                for s in range(ds.sizes["seed"]):
                    for start in range(0, n, width):
                        stop = min(start + width, n)
                        index = [t, s, slice(None), slice(None), slice(None)]
                        index[axis] = slice(start, stop)
                        out[tuple(index)] = variable.block(t, s, start, stop)


def write_results(ds: xr.Dataset, path: str | os.PathLike, overwrite: bool = False,
                  streamed: Mapping[str, Streamed] | None = None) -> Path:
    """Write ``ds`` to ``path`` atomically: a reader sees the old file or the new one, never a torn one.

    An existing file is kept (``UsageError``) unless ``overwrite``. ``streamed`` variables are
    added to the same temporary file block by block (see ``Streamed``) before it takes its name.
    """
    path = Path(path)
    check_writable(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    keep = False
    try:
        try:
            with warnings.catch_warnings():
                # Images hold no NaN, so their uint8 needs no fill value (xarray warns all the same).
                warnings.filterwarnings("ignore", "saving variable .* as an integer dtype without any "
                                        "_FillValue")
                ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=_encoding(ds))
            if streamed:
                _write_streamed(tmp, ds, streamed)
        except OSError as exc:
            raise WriteError(f"could not write {path} ({exc.strerror or exc}); nothing was written, "
                             "and rerunning the same command resumes from its work directory") from exc
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private; results are ordinary files
        if overwrite:
            os.replace(tmp, path)
            return path
        try:
            # link() refuses to replace a file that appeared meanwhile, where rename would not.
            os.link(tmp, path)
        except OSError as exc:  # it exists, or the filesystem has no hard links
            if isinstance(exc, FileExistsError) or path.exists():
                keep = True
                raise UsageError(f"{path} appeared while the study ran; its results are kept in "
                                 f"{tmp}") from None
            os.replace(tmp, path)
    finally:
        if not keep and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_writable(path: str | os.PathLike, overwrite: bool = False,
                   folder_may_be_missing: bool = False) -> None:
    """Raise ``UsageError`` unless a results file could be written at ``path``."""
    check_output(Path(path), (".nc",), "a .nc file", overwrite, folder_may_be_missing)


def validate(ds: xr.Dataset, source: str = "dataset") -> xr.Dataset:
    """Check that ``ds`` is a toolkit results dataset of a known schema; return it.

    It must hold the core's ``REQUIRED`` variables; the dims of the core's and of every variable
    the installed plugins declare are checked where present. A variable no installed plugin
    declares (its plugin is not installed here) is accepted as it is."""
    version = ds.attrs.get("toolkit_schema_version")
    if version is None:
        raise UsageError(f"{source} is not a toolkit results file (no toolkit_schema_version attribute)")
    if int(version) != SCHEMA_VERSION:
        raise UsageError(f"{source} has results schema version {version}; this toolkit reads "
                         f"version {SCHEMA_VERSION}")
    for name in REQUIRED:
        if name not in ds.variables:
            raise UsageError(f"{source} lacks variable {name!r}; a results file holds "
                             + ", ".join(REQUIRED))
    for name, variable in schema.all_variables().items():
        if name in ds.variables and ds[name].dims != variable.dims:
            raise UsageError(f"{source}: variable {name!r} has dims {ds[name].dims}, expected "
                             f"{variable.dims}")
    return ds


def open_results(path: str | os.PathLike, needs: Iterable[str] | None = None) -> xr.Dataset:
    """Open a results file and check it is one (``xarray.open_dataset`` reads it just as well).

    The file is read lazily: a variable's values are read when used. Before xarray opens it, the
    bytes that the variables in ``needs`` (default: all of them) and the dimension coordinates
    (which xarray reads at once) declare are checked against ``TOOLKIT_MAX_RESULTS_BYTES``, so a
    hostile file of a few bytes that declares terabytes is refused before any allocation, and a
    command that reads only the summary variables is not refused for a large file's features.
    ``needs`` bounds the check, not the Dataset: code that passes it must read no other variable.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no results file at {str(path)!r}")
    if isinstance(needs, str):
        raise TypeError(f"needs must be variable names, not the string {needs!r}")
    check_declared_size(path, needs)
    try:
        ds = xr.open_dataset(path, engine="netcdf4")
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable netCDF file ({exc})") from None
    try:
        return validate(ds, str(path))
    except UsageError:
        ds.close()
        raise


MAX_RESULTS_BYTES = ("TOOLKIT_MAX_RESULTS_BYTES", 16 * 2**30,
                     "bytes of a results file's variables a command may read")
declare({MAX_RESULTS_BYTES[0]: MAX_RESULTS_BYTES[1:]})


def declared(path: Path, needs: Iterable[str] | None = None) -> tuple[int, dict[str, int]]:
    """The bytes the variables named in ``needs`` (all where None) and the dimension coordinates
    of the netCDF file at ``path`` declare, and its dimensions' sizes, from its header alone."""
    import netCDF4

    wanted = None if needs is None else set(needs)
    try:
        with netCDF4.Dataset(path) as nc:
            size = sum(int(np.prod(v.shape, dtype=np.float64)) * _element_bytes(v)
                       for name, v in nc.variables.items()
                       if wanted is None or name in wanted or name in nc.dimensions)
            return size, {name: len(dim) for name, dim in nc.dimensions.items()}
    except OSError as exc:
        raise UsageError(f"{path} is not a readable netCDF file ({exc})") from None


def _element_bytes(variable: Any) -> int:
    """What one element of a netCDF4 ``variable`` takes once read: a fixed-size type its size; a
    variable-length one (strings) a Python object, whose elements never written read back as
    the fill value, however long the file declares it."""
    import netCDF4

    if variable.dtype is str or isinstance(variable.datatype, netCDF4.VLType):
        fill = variable.getncattr("_FillValue") if "_FillValue" in variable.ncattrs() else ""
        return 64 + (len(fill) if isinstance(fill, (str, bytes)) else 8 * np.size(fill))
    return np.dtype(variable.dtype).itemsize


def check_declared_size(path: Path, needs: Iterable[str] | None = None) -> None:
    """Refuse a file whose variables (those in ``needs``) declare more bytes than the limit,
    before reading any: a netCDF file of 100 KB can declare dimensions of 100,000 classes and
    chunks it never wrote."""
    size, dims = declared(path, needs)
    limit = env_limit(*MAX_RESULTS_BYTES)
    if size > limit:
        sizes = ", ".join(f"{k}={v:,}" for k, v in dims.items())
        raise UsageError(f"{path} declares {size:,} bytes of variables ({sizes}; "
                         f"{path.stat().st_size:,} bytes on disk), over the limit of {limit:,}; "
                         f"{how_to_raise(MAX_RESULTS_BYTES[0])}")
