"""Built-in datasets: CIFAR-10 and CIFAR-100 (downloaded by torchvision, read by a reader that
cannot run code), and scikit-learn's bundled digits.

Each loader returns the whole dataset in memory as uint8 tensors (:class:`toolkit.ImageDataset`).
The ``defaults`` registered with each dataset are the analysis options the study uses for it.
"""
from __future__ import annotations

import os
import pickle
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import torch

import toolkit


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR's python batches and nothing else: dicts, lists, strings, numbers and numpy
    arrays. Any other global (the way a pickle runs code) is refused, so a crafted file cannot
    execute anything; torchvision's reader would ``pickle.load`` it unrestricted."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            entry = _ArraysOnly(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise toolkit.UsageError(f"{path} is not a CIFAR python batch ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else 'truncated'}); "
                                 "delete it and download again") from None
    if not isinstance(entry, dict):
        raise toolkit.UsageError(f"{path} is not a CIFAR python batch (a {type(entry).__name__}, "
                                 "not a dict)")
    return entry


def _read_cifar(folder: Path, files: list[str], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels of CIFAR python batches."""
    images, labels = [], []
    for name in files:
        entry = _read_batch(folder / name)
        data = np.asarray(entry.get("data", ()))
        targets = entry.get("labels", entry.get(label_key))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or \
                targets is None or len(targets) != len(data):
            raise toolkit.UsageError(f"{folder / name} is not a CIFAR python batch (expected uint8 "
                                     "rows of 3072 pixels and one label per row); delete it and "
                                     "download again")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.extend(int(t) for t in targets)
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64)


def _cifar_loader(tv_name: str, label: str):
    def load(root: Path, download: bool) -> toolkit.ImageDataset:
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import check_integrity

        official = getattr(tvd, tv_name)
        folder = Path(root) / official.base_folder
        needed = [name for name, _ in official.train_list + official.test_list] + [official.meta["filename"]]
        where = (f"unpack {official.filename} ({official.url}) so that {folder}{os.sep} holds "
                 f"{', '.join(needed)}, or pass --data-root DIR")
        if not all((folder / name).is_file() for name in needed):
            if not download:
                raise toolkit.UsageError(f"{label} is not in {folder} and downloading is off; {where}")
            try:
                official(str(root), train=True, download=True)
            except (urllib.error.URLError, OSError, RuntimeError) as exc:
                reason = str(getattr(exc, "reason", exc)).strip() or type(exc).__name__
                raise toolkit.UsageError(f"{label} is not in {folder} and could not be downloaded "
                                         f"({reason}); {where}") from None
        label_key = "fine_labels" if official.meta["key"].startswith("fine") else "labels"
        train_x, train_y = _read_cifar(folder, [name for name, _ in official.train_list], label_key)
        test_x, test_y = _read_cifar(folder, [name for name, _ in official.test_list], label_key)
        classes = _read_batch(folder / official.meta["filename"]).get(official.meta["key"])
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise toolkit.UsageError(f"{folder / official.meta['filename']} lacks the class names "
                                     f"({official.meta['key']!r}); delete it and download again")
        # Warned only once the files have read well: a corrupt file is an error, not a warning.
        checked = [(name, md5) for name, md5 in official.train_list + official.test_list]
        checked.append((official.meta["filename"], official.meta["md5"]))
        if not all(check_integrity(str(folder / name), md5) for name, md5 in checked):
            warnings.warn(f"{folder} does not match the official {label} checksums; using it as it is",
                          stacklevel=2)
        return toolkit.ImageDataset(
            name=label.lower().replace("-", ""), train_images=train_x, train_labels=train_y,
            test_images=test_x, test_labels=test_y, class_names=tuple(classes))

    load.__doc__ = f"{label} via torchvision: downloaded into ROOT when allowed, else read from ROOT."
    return load


def load_digits(root: Path, download: bool) -> toolkit.ImageDataset:
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 images, 10 classes, no download.

    Pixels (0-16) are scaled to uint8 (0-255); a stratified 75/25 train/test split with a fixed seed.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, bunch.target, test_size=0.25, stratify=bunch.target, random_state=0)
    return toolkit.ImageDataset(
        name="digits",
        train_images=torch.from_numpy(x_train), train_labels=torch.from_numpy(y_train).long(),
        test_images=torch.from_numpy(x_test), test_labels=torch.from_numpy(y_test).long(),
        class_names=tuple(str(c) for c in bunch.target_names),
    )


CIFAR_TRAINING = {"crop_padding": 4, "flip": True}

# Chosen by measurement on a 2-core CPU so the full 7-interval, 5-seed study runs in minutes
# (docs/choices.md, "Digits defaults"). Training: batch 32 and SGD at 0.1 reach 59 % test accuracy at
# the 25 % stage after 3 epochs, 84 % after 5 (at SGD 0.02: 38 %). Synthesis: a step of 0.1 lets
# the median prototype of a trained model converge in 13 steps (0.05: 37 steps); images of an
# early, weak model often never reach 99 % confidence, so at most 100 steps bounds their cost and
# the file counts them as unconverged. Digits are not mirror-symmetric: no flips, 1-pixel shifts.
DIGITS_DEFAULTS = {"lr": 0.1, "epochs": 4, "train_lr": 0.1, "train_batch_size": 32,
                   "max_steps": 100, "crop_padding": 1, "flip": False}


@toolkit.hookimpl
def register_datasets(register):
    register("cifar10", _cifar_loader("CIFAR10", "CIFAR-10"),
             description="CIFAR-10, 32x32 RGB, 10 classes (torchvision)",
             defaults={"lr": 0.01, "epochs": 10, **CIFAR_TRAINING})
    register("cifar100", _cifar_loader("CIFAR100", "CIFAR-100"),
             description="CIFAR-100, 32x32 RGB, 100 classes (torchvision)",
             defaults={"lr": 0.1, "epochs": 10, **CIFAR_TRAINING})
    register("digits", load_digits,
             description="scikit-learn's bundled 8x8 digits, 1 channel, 10 classes (offline)",
             defaults=DIGITS_DEFAULTS)
