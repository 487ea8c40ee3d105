"""Built-in datasets: CIFAR-10 and CIFAR-100 through torchvision, and scikit-learn's bundled digits.

Each loader returns the whole dataset in memory as uint8 tensors (:class:`toolkit.ImageDataset`).
The ``defaults`` registered with each dataset are the analysis options the study uses for it.
"""
from __future__ import annotations

import os
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import torch

import toolkit


def _files_only(tv_class: type) -> type:
    """torchvision's CIFAR class that requires the files to exist but not to carry official checksums.

    torchvision refuses files whose md5 differs from the official release; the toolkit reads them
    anyway (users re-pack or subset CIFAR, our tests write small files in its exact format) and warns.
    """
    return type(tv_class.__name__, (tv_class,), {
        "train_list": [[name, None] for name, _ in tv_class.train_list],
        "test_list": [[name, None] for name, _ in tv_class.test_list],
        "meta": {**tv_class.meta, "md5": None},
    })


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
        checked = [(name, md5) for name, md5 in official.train_list + official.test_list]
        checked.append((official.meta["filename"], official.meta["md5"]))
        if not all(check_integrity(str(folder / name), md5) for name, md5 in checked):
            warnings.warn(f"{folder} does not match the official {label} checksums; using it as it is",
                          stacklevel=2)
        reader = _files_only(official)
        train, test = reader(str(root), train=True), reader(str(root), train=False)
        return toolkit.ImageDataset(
            name=label.lower().replace("-", ""),
            train_images=_chw(train.data), train_labels=torch.as_tensor(train.targets, dtype=torch.int64),
            test_images=_chw(test.data), test_labels=torch.as_tensor(test.targets, dtype=torch.int64),
            class_names=tuple(train.classes),
        )

    load.__doc__ = f"{label} via torchvision: downloaded into ROOT when allowed, else read from ROOT."
    return load


def _chw(images_hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_hwc.transpose(0, 3, 1, 2)))


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
# (README, "Choices worth knowing"). Training: batch 32 and SGD at 0.1 reach 59 % test accuracy at
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
