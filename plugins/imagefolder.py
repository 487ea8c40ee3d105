"""Built-in dataset ``imagefolder``: your own images, in torchvision's ImageFolder layout::

    ROOT/train/<class>/<image>          ROOT/test/<class>/<image>

``ROOT`` is ``--data-root``: a folder, or a ``.zip`` of one, read directly without unpacking; in a
zip (and in a folder) the two splits may also sit inside one top-level folder, as in
``cifar10-jpeg.zip``'s ``cifar10-jpeg/train/...``. The conventions are torchvision's: a class is a
sub-folder of ``train/`` (sorted names give the labels), an image is any file under it with one of
torchvision's image extensions, found recursively and read in sorted order. ``test/`` must hold the
same classes.

Every image is decoded once into the in-memory uint8 tensors of :class:`toolkit.ImageDataset`; the
mean and std come from the training split. Images keep their size, which must then be one square size
for all; ``--dataset imagefolder:N`` resizes every image to N x N (bilinear, antialiased) instead.
Grey images stay one channel; as soon as one image has colour, all are read as RGB.
"""
from __future__ import annotations

import io
import os
import posixpath
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import toolkit

SPLITS = ("train", "test")
LAYOUT = "ROOT/train/<class>/<image> and ROOT/test/<class>/<image>"


def _extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS
    return tuple(IMG_EXTENSIONS)


class _Folder:
    """Image files of a folder tree: names are POSIX paths relative to the folder."""

    def __init__(self, path: Path):
        self.path, self.where = path, str(path)

    def children(self, prefix: str) -> list[str]:
        folder = self.path / prefix if prefix else self.path
        return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir()) \
            if folder.is_dir() else []

    def has(self, prefix: str) -> bool:
        return (self.path / prefix).is_dir()

    def files(self, prefix: str) -> list[str]:
        found = []
        for folder, dirs, names in os.walk(self.path / prefix, followlinks=True):
            dirs.sort()
            relative = Path(folder).relative_to(self.path).as_posix()
            found += [posixpath.join(relative, name) for name in sorted(names)]
        return found

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()


class _Zip:
    """Image files of a zip archive: names are the archive's member names."""

    def __init__(self, path: Path):
        self.where = str(path)
        try:
            self.archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise toolkit.UsageError(f"--data-root {path} is not a readable zip file ({exc})") from None
        self.names = sorted(n for n in self.archive.namelist() if not n.endswith("/"))
        # Folders are implied by member names; archives need not list them as entries.
        self.folders = {posixpath.dirname(n) for n in self.names}
        for folder in list(self.folders):
            while folder:
                folder = posixpath.dirname(folder)
                self.folders.add(folder)

    def children(self, prefix: str) -> list[str]:
        return sorted({posixpath.basename(f) for f in self.folders
                       if f and posixpath.dirname(f) == prefix.rstrip("/")})

    def has(self, prefix: str) -> bool:
        return prefix in self.folders

    def files(self, prefix: str) -> list[str]:
        return [n for n in self.names if n.startswith(prefix + "/")]

    def read(self, name: str) -> bytes:
        return self.archive.read(name)


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
    for base in ([""] + tops[:1] if len(tops) == 1 else [""]):
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
            raise toolkit.UsageError(
                f"{source.where}: {folder}/ has other classes than {folders['train']}/ ("
                + "; ".join(part for part in (f"missing {', '.join(absent)}" if absent else "",
                                              f"extra {', '.join(extra)}" if extra else "") if part)
                + "); both splits need the same class folders")
        samples[split] = []
        for label, name in enumerate(classes):
            files = [f for f in source.files(posixpath.join(folder, name))
                     if f.lower().endswith(extensions)]
            if not files:
                raise toolkit.UsageError(f"{source.where}: class folder {folder}/{name}/ holds no "
                                         f"images (allowed extensions: {', '.join(extensions)})")
            samples[split] += [(f, label) for f in files]
    return classes, samples


def _decoder(source: _Folder | _Zip, size: int | None) -> Callable[[str], np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    def decode(name: str) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(source.read(name))) as image:
                image.load()
                grey = image.mode in ("1", "L", "LA", "I;16", "I", "F")
                image = image.convert("L" if grey else "RGB")
                if size is not None and image.size != (size, size):
                    image = image.resize((size, size), Image.Resampling.BILINEAR)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise toolkit.UsageError(f"{source.where}: cannot read image {name} ({exc})") from None
        pixels = np.asarray(image, dtype=np.uint8)
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return decode


def _stack(arrays: list[np.ndarray], names: list[str], where: str) -> torch.Tensor:
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape[1:]
        other = next(i for i, a in enumerate(arrays) if a.shape[1:] != first)
        h0, w0 = first
        h1, w1 = arrays[other].shape[1:]
        raise toolkit.UsageError(
            f"{where}: images differ in size ({names[0]} is {w0}x{h0}, {names[other]} is {w1}x{h1}); "
            f"pass --dataset imagefolder:N to resize all of them to N x N")
    (height, width), = shapes
    if height != width:
        raise toolkit.UsageError(f"{where}: images are {width}x{height}, not square; the models "
                                 "take square images: pass --dataset imagefolder:N to resize to N x N")
    if any(a.shape[0] == 3 for a in arrays):  # one colour image makes the whole dataset RGB
        arrays = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in arrays]
    return torch.from_numpy(np.stack(arrays))


def load_imagefolder(root: Path, download: bool = False, size: int | None = None,
                     threads: int | None = None) -> toolkit.ImageDataset:
    """Images in ImageFolder layout from ``root``, a folder or a ``.zip`` (see the module's docstring)."""
    root = Path(root)
    source = _source(root)
    folders = _split_folders(source)
    classes, samples = _listing(source, folders)
    decode = _decoder(source, size)
    names = samples["train"] + samples["test"]
    # Pillow decodes with the GIL released, so threads decode in parallel (a zip is read under a lock).
    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(decode, [f for f, _ in names], chunksize=256))
    images = _stack(arrays, [f for f, _ in names], source.where)
    labels = torch.tensor([label for _, label in names], dtype=torch.int64)
    n_train = len(samples["train"])
    return toolkit.ImageDataset(
        name="imagefolder", train_images=images[:n_train], train_labels=labels[:n_train],
        test_images=images[n_train:], test_labels=labels[n_train:], class_names=tuple(classes))


def _sized(spec: str):
    try:
        size = int(spec)
    except ValueError:
        size = 0
    if size < 1:
        raise toolkit.UsageError(f"--dataset imagefolder:{spec}: the size after 'imagefolder:' must be "
                                 "a whole number of pixels, e.g. imagefolder:32")

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
