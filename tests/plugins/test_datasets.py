"""Dataset plugins: CIFAR through torchvision on files in CIFAR's exact on-disk format, and digits."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import toolkit
from toolkit.plugins import get_registry

CIFAR_LAYOUT = {
    # name: (folder, train files, test files, meta file, meta key, label key, classes)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "label_names", "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels", 100),
}


def write_cifar(root: Path, name: str, per_file: int = 4) -> dict:
    """Small files in CIFAR's format: pickled dicts of uint8 rows (3072 = 3x32x32, CHW order)."""
    folder, train, test, meta, meta_key, label_key, classes = CIFAR_LAYOUT[name]
    (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for split, files in (("train", train), ("test", test)):
        for file in files:
            data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
            labels = [int(x) for x in rng.integers(0, classes, per_file)]
            entry = {"batch_label": file, label_key: labels, "data": data,
                     "filenames": [f"{i}.png" for i in range(per_file)]}
            if name == "cifar100":
                entry["coarse_labels"] = [0] * per_file
            with open(root / folder / file, "wb") as f:
                pickle.dump(entry, f)
            written.setdefault(split, []).append((data, labels))
    with open(root / folder / meta, "wb") as f:
        pickle.dump({meta_key: [f"class{c}" for c in range(classes)]}, f)
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loader_reads_files_in_cifar_format(tmp_path, name):
    written = write_cifar(tmp_path, name)
    loader = get_registry("dataset").get(name).obj
    with pytest.warns(UserWarning, match="does not match the official"):
        data = loader(tmp_path, download=False)
    classes = CIFAR_LAYOUT[name][-1]
    assert isinstance(data, toolkit.ImageDataset)
    assert data.num_classes == classes and data.class_names[3] == "class3"
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape[1:] == (3, 32, 32)
    rows, labels = written["train"][0]
    # the first training image, pixel for pixel, back in (C, H, W)
    assert torch.equal(data.train_images[0], torch.from_numpy(rows[0].reshape(3, 32, 32)))
    assert data.train_labels[: len(labels)].tolist() == labels
    assert len(data.test_labels) == sum(len(lab) for _, lab in written["test"])
    assert len(data.mean) == 3 and all(0 < s for s in data.std)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_missing_cifar_without_download_says_where_to_put_it(tmp_path, name):
    loader = get_registry("dataset").get(name).obj
    with pytest.raises(toolkit.UsageError, match="downloading is off; unpack .* --data-root"):
        loader(tmp_path, download=False)


def test_missing_cifar_that_cannot_be_downloaded_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(tvu, "download_url", offline)
    import torchvision.datasets.cifar as tvc

    monkeypatch.setattr(tvc, "download_and_extract_archive", offline)
    loader = get_registry("dataset").get("cifar10").obj
    with pytest.raises(toolkit.UsageError, match="could not be downloaded \\(Name or service not known\\)"):
        loader(tmp_path, download=True)


def test_digits_is_bundled_split_and_stratified():
    data = get_registry("dataset").get("digits").obj(Path("unused"), download=False)
    assert data.num_classes == 10 and data.in_chans == 1 and data.image_size == 8
    assert len(data.train_labels) + len(data.test_labels) == 1797
    assert data.train_images.max() == 255 and data.train_images.dtype == torch.uint8
    shares = torch.bincount(data.test_labels) / len(data.test_labels)
    assert shares.min() > 0.09 and shares.max() < 0.11
    again = get_registry("dataset").get("digits").obj(Path("unused"), download=False)
    assert torch.equal(again.test_images, data.test_images)  # fixed split


@pytest.mark.parametrize("change, message", [
    (dict(train_images=torch.zeros(2, 1, 4, 4)), "must be a uint8 tensor"),
    (dict(train_labels=torch.tensor([0, 5])), "must lie in \\[0, 2\\)"),
    (dict(class_names=("a", "a")), "unique names"),
    (dict(mean=(0.5, 0.5)), "one value per channel"),
])
def test_image_dataset_rejects_broken_contents(change, message):
    fields = dict(name="x", train_images=torch.zeros(2, 1, 4, 4, dtype=torch.uint8),
                  train_labels=torch.tensor([0, 1]), test_images=torch.zeros(1, 1, 4, 4, dtype=torch.uint8),
                  test_labels=torch.tensor([1]), class_names=("a", "b"))
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        toolkit.ImageDataset(**fields)


class _Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cifar_file_carrying_a_pickle_payload_is_refused_and_not_run(tmp_path):
    write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "payload-ran"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "wb") as f:
        pickle.dump({"data": _Payload(marker), "labels": []}, f)
    loader = get_registry("dataset").get("cifar10").obj
    with pytest.raises(toolkit.UsageError,
                                                  match="data_batch_2 is not a CIFAR python batch .*refusing io.open"):
        loader(tmp_path, download=False)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"", "is not a CIFAR python batch \\(EOFError"),
    (b"garbage that is not a pickle", "is not a CIFAR python batch"),
    (pickle.dumps({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}), "expected uint8 rows of 3072"),
    (pickle.dumps([1, 2, 3]), "a list, not a dict"),
])
def test_corrupt_cifar_files_are_one_line_errors(tmp_path, content, message):
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(content)
    loader = get_registry("dataset").get("cifar10").obj
    with pytest.raises(toolkit.UsageError, match=message) as info:
        loader(tmp_path, download=False)
    assert "\n" not in str(info.value)
