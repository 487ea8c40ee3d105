"""The ``imagefolder`` dataset: torchvision's ImageFolder layout from a folder or a zip."""
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image

import toolkit
from toolkit.plugins import get_registry

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"
CLASSES = ("cat", "dog", "emu")


def load(root, name="imagefolder"):
    return get_registry("dataset").get(name).obj(Path(root), False)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # lossless: pixels come back exactly
    return buffer.getvalue()


def images(size=6, per_class=(3, 2), channels=3, seed=0):
    """{relative path: pixels (H, W[, C])}: per_class training and test images of each class."""
    rng = np.random.default_rng(seed)
    shape = (size, size, channels) if channels == 3 else (size, size)
    return {f"{split}/{name}/{i:03d}.png": rng.integers(0, 256, shape, dtype=np.uint8)
            for split, count in zip(("train", "test"), per_class)
            for name in CLASSES for i in range(count)}


def write_folder(root: Path, files: dict) -> Path:
    for name, pixels in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(png(pixels) if isinstance(pixels, np.ndarray) else pixels)
    return root


def write_zip(path: Path, files: dict, top: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, pixels in files.items():
            archive.writestr(top + name, png(pixels) if isinstance(pixels, np.ndarray) else pixels)
    return path


def expected(files, split):
    names = sorted(n for n in files if n.startswith(split + "/"))
    pixels = torch.stack([torch.from_numpy(np.atleast_3d(files[n]).transpose(2, 0, 1).copy())
                          for n in names])
    return pixels, torch.tensor([CLASSES.index(n.split("/")[1]) for n in names])


@pytest.mark.parametrize("form", ["folder", "zip", "zip-in-top-folder", "folder-in-top-folder"])
def test_reads_a_folder_or_a_zip_pixel_for_pixel(tmp_path, form):
    files = images()
    if form == "folder":
        root = write_folder(tmp_path / "data", files)
    elif form == "folder-in-top-folder":
        write_folder(tmp_path / "data" / "mine", files)
        root = tmp_path / "data"
    else:
        root = write_zip(tmp_path / "data.zip", files, "mine/" if form == "zip-in-top-folder" else "")
    data = load(root)
    assert isinstance(data, toolkit.ImageDataset) and data.name == "imagefolder"
    assert data.class_names == CLASSES
    for split in ("train", "test"):
        pixels, labels = expected(files, split)
        assert torch.equal(getattr(data, f"{split}_images"), pixels)
        assert torch.equal(getattr(data, f"{split}_labels"), labels)
    # mean and std from the training split alone
    train = expected(files, "train")[0].double() / 255
    assert data.mean == pytest.approx(train.mean((0, 2, 3)).tolist())
    assert data.std == pytest.approx(train.transpose(0, 1).reshape(3, -1).std(1).tolist())


def test_grey_images_stay_one_channel_and_one_colour_image_makes_all_rgb(tmp_path):
    files = images(channels=1)
    assert load(write_folder(tmp_path / "grey", files)).in_chans == 1
    files["train/cat/zzz.png"] = np.full((6, 6, 3), 7, dtype=np.uint8)
    data = load(write_folder(tmp_path / "mixed", files))
    assert data.in_chans == 3
    first = torch.from_numpy(files["train/cat/000.png"])
    assert torch.equal(data.train_images[0], first.expand(3, 6, 6))


def test_jpeg_and_recursive_files_and_other_files_ignored(tmp_path):
    files = images()
    buffer = io.BytesIO()
    Image.fromarray(files["train/dog/000.png"]).save(buffer, format="JPEG")
    files["train/dog/deeper/x.JPG"] = buffer.getvalue()
    files["train/dog/notes.txt"] = b"not an image"
    data = load(write_folder(tmp_path, files))
    assert len(data.train_labels) == 3 * len(CLASSES) + 1
    assert (data.train_labels == 1).sum() == 4


def test_resize_on_request(tmp_path):
    files = images(size=6)
    files["train/cat/big.png"] = np.zeros((12, 12, 3), dtype=np.uint8)
    root = write_zip(tmp_path / "data.zip", files)
    with pytest.raises(toolkit.UsageError, match=r"differ in size .*12x12.*imagefolder:N"):
        load(root)
    data = load(root, "imagefolder:8")
    assert data.train_images.shape[1:] == (3, 8, 8) and data.image_size == 8
    with pytest.raises(toolkit.UsageError, match="whole number of pixels"):
        get_registry("dataset").get("imagefolder:big")


@pytest.mark.parametrize("damage, message", [
    (lambda files: {k: v for k, v in files.items() if not k.startswith("test/")},
     r"no test/ split beside train/"),
    (lambda files: {k: v for k, v in files.items() if not k.startswith("train/emu/")} |
     {"train/emu/readme.txt": b"no images here"}, r"class folder train/emu/ holds no images"),
    (lambda files: {k: v for k, v in files.items() if not k.startswith("test/emu/")},
     r"test/ has other classes than train/ \(missing emu\)"),
    (lambda files: files | {"train/cat/broken.png": b"\x89PNG broken"}, r"cannot read image .*broken"),
    (lambda files: {"photos/" + k: v for k, v in files.items()} | {"other/a.png": files["test/cat/000.png"]},
     r"holds neither train/ nor test/ \(found: other/, photos/\)"),
])
@pytest.mark.parametrize("form", ["folder", "zip"])
def test_clear_errors(tmp_path, damage, message, form):
    files = damage(images())
    root = write_folder(tmp_path / "data", files) if form == "folder" else write_zip(tmp_path / "d.zip", files)
    with pytest.raises(toolkit.UsageError, match=message):
        load(root)


def test_non_square_images_and_bad_roots(tmp_path):
    files = {k: np.zeros((4, 6, 3), dtype=np.uint8) for k in images()}
    with pytest.raises(toolkit.UsageError, match=r"6x4, not square.*imagefolder:N"):
        load(write_folder(tmp_path / "wide", files))
    with pytest.raises(toolkit.UsageError, match="does not exist"):
        load(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(toolkit.UsageError, match=r"not a \.zip"):
        load(tmp_path / "file.txt")


def test_analyze_from_the_command_line_on_a_zip(tmp_path):
    root = write_zip(tmp_path / "data.zip", images(size=8, per_class=(8, 4)))
    out = tmp_path / "r.nc"
    run = subprocess.run([sys.executable, "-m", "toolkit", "analyze", "--dataset", "imagefolder",
                          "--data-root", str(root), "--intervals", "1", "--seeds", "1", "--epochs", "1",
                          "--max_steps", "3", "--out", str(out), "--noplots", "--noprogress"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with xr.open_dataset(out) as ds:
        assert ds.sizes["k"] == 3 and list(ds["class_name"].values) == list(CLASSES)
    missing = subprocess.run([sys.executable, "-m", "toolkit", "analyze", "--dataset", "imagefolder",
                              "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.nc")],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and not (tmp_path / "x.nc").exists()
    assert len(missing.stderr.strip().splitlines()) == 1 and "does not exist" in missing.stderr


@pytest.mark.slow
@pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"{ARCHIVE} is absent (only some machines have it)")
def test_the_real_cifar10_archive():
    data = load(ARCHIVE)
    assert data.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                "horse", "ship", "truck")
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    assert torch.bincount(data.train_labels).tolist() == [5000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=2e-3)  # CIFAR-10's own
