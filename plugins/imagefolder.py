"""Built-in dataset ``imagefolder``: your own images, in torchvision's ImageFolder layout::

    ROOT/train/<class>/<image>          ROOT/test/<class>/<image>

``ROOT`` is ``--data-root``: a folder, or a ``.zip`` of one, read directly without unpacking; in a
zip (and in a folder) the two splits may also sit inside one top-level folder, as in
``cifar10-jpeg.zip``'s ``cifar10-jpeg/train/...``. The conventions are torchvision's: a class is a
sub-folder of ``train/`` (sorted names give the labels); its images are the files with one of
torchvision's image extensions (any case), found recursively in ``os.walk`` order (a folder's own
files, sorted, then its sub-folders, sorted), so a folder and its zip give the same dataset. Unlike
torchvision, hidden entries (names starting with ``.``) and ``__MACOSX/`` are skipped. ``test/``
must hold the same classes.

Pixels are read as torchvision's ``pil_loader`` reads them (no EXIF rotation; transparency dropped),
except that grey images (``L``, ``LA``, 16-bit, grey palettes) stay one channel; as soon as one
image has colour, all are RGB. Every image is decoded once, in threads, into the uint8 tensors of
:class:`toolkit.ImageDataset`; the mean and std come from the training split. Images keep their
size, which must be one square size for all (checked from the files' headers before anything is
decoded); ``--dataset imagefolder:N`` resizes every image to N x N (bilinear, antialiased) instead.

Untrusted archives cannot exhaust memory: before anything is decompressed or decoded, each file's
size (a zip member's uncompressed size, which ``zipfile`` also enforces while reading), each
image's pixel count (from its header) and the whole dataset's decoded size are checked against
``LIMITS``. A user with bigger data raises the limit that the error names, with ``--limits
TOOLKIT_MAX_IMAGE_PIXELS=100000000`` or the environment variable of that name.
"""
from __future__ import annotations

import io
import os
import posixpath
import re
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

import toolkit
from toolkit.limits import declare, env_limit, how_to_raise

SPLITS = ("train", "test")
LAYOUT = "ROOT/train/<class>/<image> and ROOT/test/<class>/<image>"
MAX_SIZE = 2048  # imagefolder:N; 60,000 RGB images of 2048 x 2048 would already need 755 GB
GREY_MODES = ("1", "L", "LA", "I;16", "I;16L", "I;16B", "I;16N")

# Environment variable -> (default, what it bounds). A 10000 x 10000 PNG is 3 KB on disk and 300 MB
# decoded; a zip member of 4 GiB of zeros is 4 MB: both are refused by default.
LIMITS = {
    "TOOLKIT_MAX_FILE_BYTES": (256 * 2**20, "bytes of one image file (a zip member uncompressed)"),
    "TOOLKIT_MAX_IMAGE_PIXELS": (4096 * 4096, "pixels of one image (width x height)"),
    "TOOLKIT_MAX_DATASET_BYTES": (8 * 2**30, "bytes of the decoded dataset (uint8 tensors)"),
}
declare(LIMITS)


def limit(name: str) -> int:
    """The limit ``name`` of ``LIMITS``: the environment's value, else the default."""
    return env_limit(name, *LIMITS[name])


def _over(what: str, amount: int, name: str) -> toolkit.UsageError:
    return toolkit.UsageError(f"{what} {amount:,} is over the limit of {limit(name):,} "
                              f"{LIMITS[name][1]}; {how_to_raise(name)}")


def _extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS
    return tuple(IMG_EXTENSIONS)


def _visible(name: str) -> bool:
    return not name.startswith(".") and name != "__MACOSX"


class _Folder:
    """A folder tree; names are POSIX paths relative to it."""

    def __init__(self, path: Path):
        self.path, self.where = path, str(path)

    def _entries(self, prefix: str) -> list[os.DirEntry]:
        folder = self.path / prefix if prefix else self.path
        return [e for e in os.scandir(folder) if _visible(e.name)] if folder.is_dir() else []

    def children(self, prefix: str) -> list[str]:
        return sorted(e.name for e in self._entries(prefix) if e.is_dir())  # follows symlinks

    def direct_files(self, prefix: str) -> list[str]:
        return sorted(e.name for e in self._entries(prefix) if not e.is_dir())

    def has(self, prefix: str) -> bool:
        return (self.path / prefix).is_dir()

    def read(self, name: str) -> bytes:
        path = self.path / name
        if path.stat().st_size > limit("TOOLKIT_MAX_FILE_BYTES"):
            raise _over(f"{self.where}: {name} holds", path.stat().st_size, "TOOLKIT_MAX_FILE_BYTES")
        return path.read_bytes()


class _Zip:
    """A zip archive; names are its member names (folders implied by them or listed as entries)."""

    def __init__(self, path: Path):
        self.where = str(path)
        try:
            self.archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise toolkit.UsageError(f"--data-root {path} is not a readable zip file ({exc})") from None
        # ZipFile is not safe for concurrent reads (3.11 counts its open handles without a lock):
        # members are read one at a time, and decoded in parallel.
        self._lock = threading.Lock()
        self._files: dict[str, list[str]] = {}
        self._folders: dict[str, set[str]] = {"": set()}
        for name in self.archive.namelist():
            parts = [p for p in name.split("/") if p]
            if not parts or not all(map(_visible, parts)):
                continue
            folders = parts if name.endswith("/") else parts[:-1]
            for depth in range(len(folders)):
                parent, child = "/".join(folders[:depth]), folders[depth]
                self._folders.setdefault(parent, set()).add(child)
                self._folders.setdefault("/".join(folders[:depth + 1]), set())
            if not name.endswith("/"):
                self._files.setdefault("/".join(parts[:-1]), []).append(parts[-1])

    def children(self, prefix: str) -> list[str]:
        return sorted(self._folders.get(prefix, ()))

    def direct_files(self, prefix: str) -> list[str]:
        return sorted(self._files.get(prefix, ()))

    def has(self, prefix: str) -> bool:
        return prefix in self._folders

    def read(self, name: str) -> bytes:
        size = self.archive.getinfo(name).file_size  # zipfile reads no more than this
        if size > limit("TOOLKIT_MAX_FILE_BYTES"):
            raise _over(f"{self.where}: member {name} unpacks to", size, "TOOLKIT_MAX_FILE_BYTES")
        with self._lock:
            return self.archive.read(name)


def _walk(source: _Folder | _Zip, prefix: str) -> Iterator[str]:
    """Files under ``prefix`` in ``os.walk`` order: the folder's own files, then each sub-folder."""
    yield from (posixpath.join(prefix, name) for name in source.direct_files(prefix))
    for child in source.children(prefix):
        yield from _walk(source, posixpath.join(prefix, child))


def _source(root: Path) -> _Folder | _Zip:
    if root.is_file():
        if not zipfile.is_zipfile(root):
            raise toolkit.UsageError(f"--data-root {root} is a file but not a .zip; imagefolder reads "
                                     f"a folder or a zip holding {LAYOUT}")
        return _Zip(root)
    if not root.is_dir():
        raise toolkit.UsageError(f"--data-root {root} does not exist; imagefolder reads a folder or "
                                 f"a zip holding {LAYOUT}")
    return _Folder(root)


def _split_folders(source: _Folder | _Zip) -> dict[str, str]:
    """Where ``train`` and ``test`` are: at the top, or inside the one top-level folder."""
    tops = source.children("")
    for base in ([""] + tops if len(tops) == 1 else [""]):
        found = {s: posixpath.join(base, s) for s in SPLITS if source.has(posixpath.join(base, s))}
        if found:
            missing = [s for s in SPLITS if s not in found]
            if missing:
                present, = found.values()
                raise toolkit.UsageError(f"{source.where} has no {missing[0]}/ split beside {present}/; "
                                         f"imagefolder needs {LAYOUT}")
            return found
    raise toolkit.UsageError(f"{source.where} holds neither train/ nor test/ (found: "
                             f"{', '.join(t + '/' for t in tops) or 'no folders'}); imagefolder needs "
                             f"{LAYOUT}")


def _listing(source: _Folder | _Zip, folders: dict[str, str]) -> tuple[list[str], dict[str, list]]:
    """Class names, and per split the (file, label) pairs, torchvision's ImageFolder conventions."""
    extensions = _extensions()
    classes = source.children(folders["train"])
    if len(classes) < 2:
        raise toolkit.UsageError(f"{source.where}: {folders['train']}/ holds {len(classes)} class "
                                 "folder(s); imagefolder needs at least 2 (one per class)")
    samples = {}
    for split, folder in folders.items():
        present = source.children(folder)
        if present != classes:
            extra = sorted(set(present) - set(classes))
            absent = sorted(set(classes) - set(present))
            differences = [f"missing {', '.join(absent)}" if absent else "",
                           f"extra {', '.join(extra)}" if extra else ""]
            raise toolkit.UsageError(
                f"{source.where}: {folder}/ has other classes than {folders['train']}/ "
                f"({'; '.join(d for d in differences if d)}); both splits need the same class folders")
        samples[split] = []
        for label, name in enumerate(classes):
            files = [f for f in _walk(source, posixpath.join(folder, name))
                     if f.lower().endswith(extensions)]
            if not files:
                raise toolkit.UsageError(f"{source.where}: class folder {folder}/{name}/ holds no "
                                         f"images (allowed extensions: {', '.join(extensions)})")
            samples[split] += [(f, label) for f in files]
    return classes, samples


class _Reader:
    """Opens the images of one source; every failure is a one-line ``UsageError`` naming the file."""

    def __init__(self, source: _Folder | _Zip, size: int | None):
        self.source, self.size = source, size

    def open(self, name: str):
        from PIL import Image
        try:
            return Image.open(io.BytesIO(self.source.read(name)))
        except toolkit.UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 (a zip member or an image: many ways to be broken)
            raise self._unreadable(name, exc) from None

    def _unreadable(self, name: str, exc: Exception) -> toolkit.UsageError:
        from PIL import UnidentifiedImageError
        reason = "not an image Pillow can read" if isinstance(exc, UnidentifiedImageError) else \
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"
        return toolkit.UsageError(f"{self.source.where}: cannot read image {name} ({reason})")

    def header(self, name: str) -> tuple[tuple[int, int], bool]:
        """(width, height) and whether the image is grey, from the file's header alone."""
        with self.open(name) as image:
            width, height = image.size
            if width * height > limit("TOOLKIT_MAX_IMAGE_PIXELS"):
                raise toolkit.UsageError(
                    f"{self.source.where}: image {name} is {width}x{height}, "
                    f"{width * height:,} pixels, over the limit of "
                    f"{limit('TOOLKIT_MAX_IMAGE_PIXELS'):,} per image; "
                    + how_to_raise("TOOLKIT_MAX_IMAGE_PIXELS"))
            return image.size, self._grey(image)

    @staticmethod
    def _grey(image) -> bool:
        if image.mode in GREY_MODES:
            return True
        if image.mode == "P":  # a palette of greys only
            palette = np.asarray(image.getpalette() or [0, 0, 0]).reshape(-1, 3)
            return bool((palette == palette[:, :1]).all())
        return False

    def pixels(self, name: str, channels: int) -> np.ndarray:
        """The image as uint8 (channels, H, W), resized to ``size`` when one is set."""
        from PIL import Image
        try:
            with self.open(name) as image:
                image.load()
                if image.mode.startswith("I;16"):  # 16-bit grey: scaled to 8 bits, not clipped
                    image = Image.fromarray(
                        (np.asarray(image, dtype=np.float64) / 257).round().astype(np.uint8))
                image = image.convert("L" if channels == 1 else "RGB")
                if self.size is not None and image.size != (self.size, self.size):
                    image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
                array = np.asarray(image, dtype=np.uint8)
        except toolkit.UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 (truncated data, decompression bombs, ...)
            raise self._unreadable(name, exc) from None
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _check_sizes(sizes: list[tuple[int, int]], names: list[str], where: str) -> int:
    first = sizes[0]
    for name, size in zip(names, sizes):
        if size != first:
            raise toolkit.UsageError(
                f"{where}: images differ in size ({names[0]} is {first[0]}x{first[1]}, {name} is "
                f"{size[0]}x{size[1]}); pass --dataset imagefolder:N to resize all of them to N x N")
    width, height = first
    if width != height:
        raise toolkit.UsageError(f"{where}: images are {width}x{height}, not square; the models "
                                 "take square images: pass --dataset imagefolder:N to resize to N x N")
    return width


def load_imagefolder(root: Path, download: bool = False, size: int | None = None,
                     threads: int | None = None) -> toolkit.ImageDataset:
    """Images in ImageFolder layout from ``root``, a folder or a ``.zip`` (see the module's docstring)."""
    source = _source(Path(root))
    folders = _split_folders(source)
    classes, samples = _listing(source, folders)
    files = [f for f, _ in samples["train"] + samples["test"]]
    reader = _Reader(source, size)
    # Pillow decodes with the GIL released, so threads decode in parallel.
    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        headers = list(pool.map(reader.header, files))
        side = size or _check_sizes([s for s, _ in headers], files, source.where)
        channels = 1 if all(grey for _, grey in headers) else 3
        total = len(files) * channels * side * side
        if total > limit("TOOLKIT_MAX_DATASET_BYTES"):
            raise _over(f"{source.where}: {len(files):,} images of {channels}x{side}x{side} decode to",
                        total, "TOOLKIT_MAX_DATASET_BYTES")
        images = torch.empty((len(files), channels, side, side), dtype=torch.uint8)

        def decode(index: int) -> None:
            images[index].numpy()[...] = reader.pixels(files[index], channels)
        for _ in pool.map(decode, range(len(files))):
            pass
    labels = torch.tensor([label for _, label in samples["train"] + samples["test"]])
    n_train = len(samples["train"])
    return toolkit.ImageDataset(
        name="imagefolder", train_images=images[:n_train], train_labels=labels[:n_train],
        test_images=images[n_train:], test_labels=labels[n_train:], class_names=tuple(classes))


def _sized(spec: str):
    if not re.fullmatch(r"[0-9]+", spec) or not 1 <= int(spec) <= MAX_SIZE:
        raise toolkit.UsageError(f"--dataset imagefolder:{spec}: the size after 'imagefolder:' must be "
                                 f"a whole number of pixels from 1 to {MAX_SIZE}, e.g. imagefolder:32")
    size = int(spec)

    def load(root: Path, download: bool) -> toolkit.ImageDataset:
        return load_imagefolder(root, download, size=size)
    load.__doc__ = f"ImageFolder layout from --data-root (folder or .zip), resized to {size}x{size}."
    return load


@toolkit.hookimpl
def register_datasets(register):
    register("imagefolder", load_imagefolder,
             description="your images from --data-root: a folder or .zip with train/<class>/ and "
                         "test/<class>/ (torchvision's ImageFolder layout)")
    register("imagefolder:", _sized, prefix=True,
             description="the same, every image resized to N x N: imagefolder:N")
