"""The replication study of README.md in this folder, as it was run (from the repository root)::

    python examples/replicate-cifar10/run.py [--archive ../shared/data/cifar10-jpeg.zip]

1. ``subset``: a stratified subset of the archive's CIFAR-10 (per class: 1,000 training and 500 test
   images, drawn with a fixed seed), written as a zip in the same ImageFolder layout with the JPEG
   files copied byte for byte; the toolkit reads it with the ``imagefolder`` dataset.
2. ``analyze``: the poster's protocol on it (schedule ``data``, the 7 intervals, 5 seeds, synthesis
   step 0.01 and loss threshold 0.01) with the CIFAR-stem ResNet18, sized to fit a 2-core CPU (see
   the README for every departure), then the same trained checkpoints probed with a step of 0.1
   (``ARMS``). Each runs in a work directory: kill it and run this script again to resume.
3. ``report``: figures, the HTML report and ``summary.json`` (every number the README quotes).

Options are keyword arguments of :func:`main` (``--stage analyze``, ``--out DIR``, ...).
"""
from __future__ import annotations

import random
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# The protocol (README, "Setup"). Training: 2 epochs per stage over the growing nested subsets
# (4.65 x 2 passes over the 10,000 images in all), SGD 0.05 at batch 64 with CIFAR's crop and flip.
PROTOCOL = dict(
    model="resnet18", dataset="imagefolder", schedule="data",
    intervals=(0.25, 0.40, 0.60, 0.70, 0.80, 0.90, 1.00), seeds=5, seed_start=0,
    epochs=2, train_lr=0.05, train_batch_size=64, crop_padding=4, flip=True,
    loss_threshold=0.01, metrics=("cosine", "zscore", "mg"), precision="fp32", save_images=True,
)
# The synthesis of each arm, all on the same trained checkpoints (the first arm trains them):
# ``step0.01``: the poster's CIFAR-10 step 0.01, at most 40 steps per image (what fits here);
# ``step0.1``: CIFAR-100's step 0.1, at most 40 steps (a path of 4, the authors' 250 x 0.01 is 2.5),
# at the first, middle and last interval (time);
# ``fixed250``: the authors' code, a fixed 250 steps of 0.01, one seed at the first and last
# interval (not run by default: about 15 minutes more here; ``--arms fixed250`` runs it).
ARMS = {"step0.01": dict(lr=0.01, max_steps=40),
        "step0.1": dict(lr=0.1, max_steps=40, intervals=(0.25, 0.60, 1.00)),
        "fixed250": dict(lr=0.01, fixed_steps=250, seeds=1, intervals=(0.25, 1.00))}
DEFAULT_ARMS = ("step0.01", "step0.1")
TRAIN_PER_CLASS, TEST_PER_CLASS = 1000, 500


def make_subset(archive: Path, out: Path, train: int = TRAIN_PER_CLASS, test: int = TEST_PER_CLASS,
                seed: int = 0) -> Path:
    """Copy a stratified random subset of ``archive`` (ImageFolder layout) into the zip ``out``."""
    if out.is_file():
        return out
    with zipfile.ZipFile(archive) as source:  # (a subset of another size lives in another folder)
        groups: dict[tuple[str, str], list[str]] = {}
        for name in sorted(source.namelist()):
            parts = name.split("/")
            if name.endswith("/") or len(parts) < 3 or parts[-3] not in ("train", "test"):
                continue
            groups.setdefault((parts[-3], parts[-2]), []).append(name)
        rng = random.Random(seed)
        partial = out.with_suffix(".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as subset:
            for (split, label), names in sorted(groups.items()):
                wanted = train if split == "train" else test
                if wanted > len(names):
                    partial.unlink()
                    raise SystemExit(f"run.py: {archive} holds {len(names)} {split} images of class "
                                     f"{label}, fewer than the {wanted} asked for")
                for name in sorted(rng.sample(names, wanted)):
                    subset.writestr(f"{split}/{label}/{name.rsplit('/', 1)[1]}", source.read(name))
    partial.rename(out)
    return out


def main(archive: str = str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"),
         out: str | None = None, stage: str = "all", arms: str | tuple = DEFAULT_ARMS,
         train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS,
         threads: int | None = None) -> None:
    """Run the study's stages (``subset``, ``analyze``, ``report`` or ``all``) for ``arms``
    (comma-separated names of ``ARMS``; the first arm's training must exist or run first), on
    ``train_per_class`` and ``test_per_class`` images of each class (5000 and 1000: all of
    CIFAR-10), with ``threads`` torch threads. ``out`` defaults to ``results/replicate-cifar10``
    for the study's sizes and ``results/replicate-cifar10-<train>-<test>`` for others, so that
    results of other sizes never mix."""
    import torch

    import toolkit

    arms = tuple(a for a in (arms.split(",") if isinstance(arms, str) else arms) if a)
    unknown = [a for a in arms if a not in ARMS]
    if unknown or stage not in ("all", "subset", "analyze", "report"):
        raise SystemExit(f"run.py: unknown {'arm ' + unknown[0] if unknown else 'stage ' + stage}; "
                         f"arms: {', '.join(ARMS)}; stages: all, subset, analyze, report")
    if threads:
        torch.set_num_threads(threads)
    default = (train_per_class, test_per_class) == (TRAIN_PER_CLASS, TEST_PER_CLASS)
    folder = Path(out) if out else ROOT / "results" / (
        "replicate-cifar10" if default else f"replicate-cifar10-{train_per_class}-{test_per_class}")
    folder.mkdir(parents=True, exist_ok=True)
    if stage in ("all", "subset", "analyze"):
        if not Path(archive).is_file() and not (folder / "cifar10-subset.zip").is_file():
            raise SystemExit(f"run.py: no archive at {archive}; pass --archive PATH to "
                             "cifar10-jpeg.zip (ImageFolder layout, see ../shared/data/README.md)")
        data_zip = make_subset(Path(archive), folder / "cifar10-subset.zip", train_per_class,
                               test_per_class)
    if stage in ("all", "analyze"):
        first = next(iter(ARMS))
        for arm in arms:
            synthesis, out = ARMS[arm], folder / f"{arm}.nc"
            if out.is_file():
                continue
            toolkit.analyze(out=out, data_root=str(data_zip), progress=True,
                            **{**PROTOCOL, **synthesis},
                            checkpoints=None if arm == first else folder / f"{first}.work")
    if stage in ("all", "report"):
        from report import report  # this folder's report.py
        report(folder, HERE)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    import fire
    fire.Fire(main)
