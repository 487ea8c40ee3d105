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

ARCHIVE = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg.zip"
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


def write_zip(path: Path, files: dict, top: str = "", folder_entries: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        if folder_entries:  # as `zip -r` and shutil.make_archive write them
            folders = {top + "/".join(n.split("/")[:depth]) + "/" for n in files
                       for depth in range(1, n.count("/") + 1)}
            for folder in sorted(folders):
                archive.writestr(folder, b"")
        for name, pixels in files.items():
            archive.writestr(top + name, png(pixels) if isinstance(pixels, np.ndarray) else pixels)
    return path


def expected(files, split):
    names = sorted(n for n in files if n.startswith(split + "/"))
    pixels = torch.stack([torch.from_numpy(np.atleast_3d(files[n]).transpose(2, 0, 1).copy())
                          for n in names])
    return pixels, torch.tensor([CLASSES.index(n.split("/")[1]) for n in names])


@pytest.mark.parametrize("form", ["folder", "zip", "zip-in-top-folder", "folder-in-top-folder",
                                  "zip-with-folder-entries"])
def test_reads_a_folder_or_a_zip_pixel_for_pixel(tmp_path, form):
    files = images()
    if form == "folder":
        root = write_folder(tmp_path / "data", files)
    elif form == "folder-in-top-folder":
        write_folder(tmp_path / "data" / "mine", files)
        root = tmp_path / "data"
    else:
        root = write_zip(tmp_path / "data.zip", files, "mine/" if form == "zip-in-top-folder" else "",
                         folder_entries=form == "zip-with-folder-entries")
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


def test_recursive_files_in_os_walk_order_the_same_from_a_folder_and_a_zip(tmp_path):
    files = images()
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 6, 3), 200, dtype=np.uint8)).save(buffer, format="JPEG")
    files["train/dog/a-deeper/x.JPG"] = buffer.getvalue()   # sorts before the folder's own files
    files["train/dog/zz.png"] = np.zeros((6, 6, 3), dtype=np.uint8)
    files["train/dog/notes.txt"] = b"not an image"
    files["train/.ipynb_checkpoints/junk.png"] = files["train/cat/000.png"]  # hidden: not a class
    files["train/cat/._000.png"] = b"macOS resource fork"                    # hidden: not an image
    folder = load(write_folder(tmp_path / "folder", files))
    archive = write_zip(tmp_path / "d.zip", files | {"__MACOSX/train/cat/._000.png": b"fork"},
                        top="top/", folder_entries=True)
    zipped = load(archive)
    assert folder.class_names == zipped.class_names == CLASSES
    assert torch.equal(folder.train_images, zipped.train_images)
    assert torch.equal(folder.train_labels, zipped.train_labels)
    dog = folder.train_images[folder.train_labels == 1]
    assert len(dog) == 5
    # os.walk order: the folder's own files (000, 001, 002, zz), then the sub-folder's x.JPG
    assert torch.equal(dog[3], torch.zeros(3, 6, 6, dtype=torch.uint8))
    assert (dog[4].float() - 200).abs().max() <= 2  # the JPEG, last


def test_image_modes(tmp_path):
    files = images(channels=1)
    grey = files["train/cat/000.png"]
    palette = Image.fromarray(grey).convert("P")   # a palette of greys stays one channel
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    files["train/cat/000.png"] = buffer.getvalue()
    deep = (grey.astype(np.uint16) * 257)          # 16-bit grey: scaled to 8 bits, not clipped
    buffer = io.BytesIO()
    Image.fromarray(deep).save(buffer, format="PNG")
    files["train/cat/001.png"] = buffer.getvalue()
    data = load(write_folder(tmp_path / "grey", files))
    assert data.in_chans == 1
    assert torch.equal(data.train_images[0, 0], torch.from_numpy(grey))
    assert torch.equal(data.train_images[1, 0], torch.from_numpy(grey))
    rgba = np.concatenate([files["train/dog/000.png"][..., None].repeat(3, -1),
                           np.zeros((6, 6, 1), dtype=np.uint8)], -1)
    files["train/dog/000.png"] = png(rgba)           # transparency dropped, as torchvision does
    data = load(write_folder(tmp_path / "colour", files))
    assert data.in_chans == 3
    dog = data.train_images[data.train_labels == 1][0]
    assert torch.equal(dog, torch.from_numpy(rgba[..., :3].transpose(2, 0, 1).copy()))


def test_resize_on_request(tmp_path):
    files = images(size=6)
    files["train/cat/big.png"] = np.zeros((12, 12, 3), dtype=np.uint8)
    root = write_zip(tmp_path / "data.zip", files)
    with pytest.raises(toolkit.UsageError, match=r"differ in size .*12x12.*imagefolder:N"):
        load(root)
    data = load(root, "imagefolder:8")
    assert data.train_images.shape[1:] == (3, 8, 8) and data.image_size == 8
    first = Image.fromarray(files["train/cat/000.png"]).resize((8, 8), Image.Resampling.BILINEAR)
    assert torch.equal(data.train_images[0], torch.from_numpy(np.asarray(first).transpose(2, 0, 1).copy()))
    for spec in ("big", "+32", "0", "99999"):
        with pytest.raises(toolkit.UsageError, match="whole number of pixels from 1 to"):
            get_registry("dataset").get(f"imagefolder:{spec}")


@pytest.mark.parametrize("damage, message", [
    (lambda files: {k: v for k, v in files.items() if not k.startswith("test/")},
     r"no test/ split beside train/"),
    (lambda files: {k: v for k, v in files.items() if not k.startswith("train/emu/")} |
     {"train/emu/readme.txt": b"no images here"}, r"class folder train/emu/ holds no images"),
    (lambda files: {k: v for k, v in files.items() if not k.startswith("test/emu/")},
     r"test/ has other classes than train/ \(missing emu\)"),
    (lambda files: files | {"train/cat/broken.png": b"\x89PNG broken"},
     r"cannot read image .*broken.png \(not an image Pillow can read\)"),
    (lambda files: files | {"train/cat/cut.png": png(files["train/cat/000.png"])[:60]},
     r"cannot read image .*cut.png \((OSError|SyntaxError|ValueError)"),
    (lambda files: {"photos/" + k: v for k, v in files.items()} | {"other/a.png": files["test/cat/000.png"]},
     r"holds neither train/ nor test/ \(found: other/, photos/\)"),
])
@pytest.mark.parametrize("form", ["folder", "zip"])
def test_clear_errors(tmp_path, damage, message, form):
    files = damage(images())
    root = (write_folder(tmp_path / "data", files) if form == "folder"
            else write_zip(tmp_path / "d.zip", files))
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


@pytest.mark.slow
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


def test_an_empty_class_folder_listed_in_a_zip_is_named(tmp_path):
    files = {k: v for k, v in images().items() if not k.startswith("train/emu/")}
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as archive:
        archive.writestr("train/emu/", b"")
        for name, pixels in files.items():
            archive.writestr(name, png(pixels))
    with pytest.raises(toolkit.UsageError, match=r"class folder train/emu/ holds no images"):
        load(tmp_path / "d.zip")


def test_many_images_decoded_by_many_threads_equal_one_thread(tmp_path):
    from toolkit_plugins.imagefolder import load_imagefolder

    root = write_zip(tmp_path / "d.zip", images(size=5, per_class=(60, 20)))
    one, many = (load_imagefolder(root, threads=t) for t in (1, 6))
    assert torch.equal(one.train_images, many.train_images) and len(one.train_labels) == 180
    assert torch.equal(one.test_images, expected(images(size=5, per_class=(60, 20)), "test")[0])


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says ``width x height`` (8-bit grey), with a few bytes of data: what an
    attacker ships to make a reader allocate width x height pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, at 89 MP
@pytest.mark.parametrize("form", ["folder", "zip"])
def test_huge_images_are_refused_from_their_header_before_any_decoding(tmp_path, form, monkeypatch):
    files = images() | {"train/cat/huge.png": _png_claiming(10000, 10000)}  # 3 KB, 100 MP
    root = (write_folder(tmp_path / "data", files) if form == "folder"
            else write_zip(tmp_path / "d.zip", files))
    allocated = []
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: allocated.append(a) or real_empty(*a, **k))
    with pytest.raises(toolkit.UsageError, match=r"huge.png is 10000x10000, 100,000,000 pixels, over "
                       r"the limit of 16,777,216 per image; raise it with --limits TOOLKIT_MAX_IMAGE_PIXELS=N "
                       r"\(or the environment variable TOOLKIT_MAX_IMAGE_PIXELS\)"):
        load(root)
    assert not allocated
    monkeypatch.setenv("TOOLKIT_MAX_IMAGE_PIXELS", "35")  # the user's own limit: 6x6 images pass...
    with pytest.raises(toolkit.UsageError, match=r"6x6, 36 pixels, over the limit of 35"):
        load(write_folder(tmp_path / "small", images()))
    monkeypatch.setenv("TOOLKIT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(toolkit.UsageError, match=r"TOOLKIT_MAX_IMAGE_PIXELS='lots' must be a whole"):
        load(write_folder(tmp_path / "small2", images()))


@pytest.mark.slow
def test_a_deflate_bomb_is_refused_by_its_uncompressed_size_before_it_is_read(tmp_path, monkeypatch):
    files = images()
    bomb = tmp_path / "bomb.zip"
    write_zip(bomb, files)
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("train/cat/bomb.png", b"\x00" * (300 * 2**20))  # 300 MiB in ~300 KB
    assert bomb.stat().st_size < 2**20
    read, real_read = [], zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read",
                        lambda self, name, pwd=None: read.append(name) or real_read(self, name, pwd))
    with pytest.raises(toolkit.UsageError, match=r"member train/cat/bomb.png unpacks to 314,572,800 "
                       r"is over the limit of 268,435,456 bytes .* TOOLKIT_MAX_FILE_BYTES=N"):
        load(bomb)
    assert "train/cat/bomb.png" not in read


def test_the_decoded_dataset_has_a_memory_budget(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "data", images())  # 15 RGB images of 6 x 6: 1,620 bytes
    monkeypatch.setenv("TOOLKIT_MAX_DATASET_BYTES", "1619")
    with pytest.raises(toolkit.UsageError, match=r"15 images of 3x6x6 decode to 1,620 is over the "
                       r"limit of 1,619 bytes of the decoded dataset.*TOOLKIT_MAX_DATASET_BYTES"):
        load(root)
    monkeypatch.setenv("TOOLKIT_MAX_DATASET_BYTES", "1620")
    assert load(root).train_images.shape == (9, 3, 6, 6)
    monkeypatch.setenv("TOOLKIT_MAX_FILE_BYTES", "10")
    with pytest.raises(toolkit.UsageError, match=r"train/cat/000.png holds \d+ is over the limit of "
                       r"10 bytes of one image file"):
        load(root)


def test_limits_are_raised_and_checked_from_the_command_line(tmp_path, monkeypatch, capsys):
    from toolkit.__main__ import main

    for name in ("TOOLKIT_MAX_IMAGE_PIXELS", "TOOLKIT_MAX_RESULTS_BYTES"):
        monkeypatch.setenv(name, "1000000")  # undone after the test, as --limits sets the variable
    out = tmp_path / "r.nc"
    argv = ["analyze", "--dataset", "imagefolder", "--data_root", str(write_zip(tmp_path / "d.zip", images())),
            "--out", str(out), "--limits", "TOOLKIT_MAX_IMAGE_PIXELS=35"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "36 pixels, over the limit of 35 per image; raise it with --limits TOOLKIT_MAX_IMAGE_PIXELS=N" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert main(["plugins", "--limits", "TOOLKIT_MAX_PIXELS=5"]) == 2
    err = capsys.readouterr().err
    assert "--limits: unknown limit 'TOOLKIT_MAX_PIXELS'; the limits are TOOLKIT_MAX_DATASET_BYTES (" in err
    assert "TOOLKIT_MAX_RESULTS_BYTES (bytes of a results file's variables a command may read" in err
    assert main(["--limits", "TOOLKIT_MAX_RESULTS_BYTES=lots", "summary", "x.nc"]) == 2
    assert "--limits TOOLKIT_MAX_RESULTS_BYTES='lots': the limit must be a whole number >= 1" in capsys.readouterr().err
    assert main(["plugins", "--limits", "TOOLKIT_MAX_IMAGE_PIXELS"]) == 2
    assert "give NAME=N" in capsys.readouterr().err
    for bad in ("TOOLKIT_MAX_IMAGE_PIXELS=1_", "TOOLKIT_MAX_IMAGE_PIXELS=0", "TOOLKIT_MAX_IMAGE_PIXELS=-3"):
        assert main(["plugins", "--limits", bad]) == 2
        assert "the limit must be a whole number >= 1" in capsys.readouterr().err
    assert main(["plugins", "--limits", "5"]) == 2
    assert "give NAME=N pairs" in capsys.readouterr().err
    monkeypatch.setenv("TOOLKIT_MAX_IMAGE_PIXELS", "5_")
    with pytest.raises(toolkit.UsageError, match="TOOLKIT_MAX_IMAGE_PIXELS='5_' must be a whole number"):
        load(write_folder(tmp_path / "small", images()))


@pytest.mark.slow
def test_every_documented_limit_is_known_to_a_fresh_process(tmp_path):
    for name in ("TOOLKIT_MAX_RESULTS_BYTES", "TOOLKIT_MAX_IMAGE_PIXELS", "TOOLKIT_MAX_FILE_BYTES",
                 "TOOLKIT_MAX_DATASET_BYTES"):
        run = subprocess.run([sys.executable, "-m", "toolkit", "--limits", f"{name}=5", "plugins"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
