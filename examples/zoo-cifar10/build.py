"""Build the CIFAR-10 zoo: 17 classifiers, trained deterministically (design: PREREGISTRATION.md).

    python examples/zoo-cifar10/build.py                     # all 17, into examples/zoo-cifar10/weights/
    python examples/zoo-cifar10/build.py --only mlp512-ep2 --out /tmp/zoo

The data are ``../shared/data/cifar10-jpeg.zip`` (``--archive``), read by the ``imagefolder``
dataset; without it the script says so and stops. The recipes and the bookkeeping are the digits
zoo's (``examples/zoo-digits/build.py``: ``OUT/<name>.pt`` holds the normalising wrapper's
``state_dict``, ``OUT/zoo.json`` the recipe, test accuracy and cost of each model; a model whose
file exists is not trained again). Training: SGD at 0.2 with momentum 0.9, weight decay 5e-4,
batch 512, one cosine schedule, crop and flip, bfloat16 autocast where the CPU has bf16 matrix
units, fp32 elsewhere. ``study.py run`` builds and scores the zoo one model
at a time through :func:`build`.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
PLUGINS = (HERE / "zoo_models.py", ROOT / "examples" / "zoo-digits" / "zoo_models.py")  # fast:N, mlp:N


def load_script(path: Path):
    """A sibling example's script as a module (the folders' names are not importable)."""
    spec = importlib.util.spec_from_file_location(f"zoo_{path.parent.name}_{path.stem}".replace("-", "_"),
                                                  path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


digits = load_script(ROOT / "examples" / "zoo-digits" / "build.py")
Recipe = digits.Recipe

BASE = Recipe(epochs=8)
# In the order they are built and scored (PREREGISTRATION.md): cheapest architecture first.
ZOO: dict[str, tuple[str, Recipe]] = {
    "mlp512-base-s0": ("mlp:512", BASE),
    "mlp512-ep2": ("mlp:512", Recipe(epochs=2)),
    "mlp512-noise20": ("mlp:512", Recipe(epochs=8, noise=0.2)),
    "fast32-base-s0": ("fast:32", BASE),
    "fast32-base-s1": ("fast:32", Recipe(epochs=8, seed=1)),
    "fast32-ep2": ("fast:32", Recipe(epochs=2)),
    "fast32-noise50": ("fast:32", Recipe(epochs=8, noise=0.5)),
    "fast32-data25": ("fast:32", Recipe(epochs=8, fraction=0.25)),
    "fast64-base-s0": ("fast:64", BASE),
    "fast64-base-s1": ("fast:64", Recipe(epochs=8, seed=1)),
    "fast64-base-s2": ("fast:64", Recipe(epochs=8, seed=2)),
    "fast64-ep2": ("fast:64", Recipe(epochs=2)),
    "fast64-noise20": ("fast:64", Recipe(epochs=8, noise=0.2)),
    "fast64-data25": ("fast:64", Recipe(epochs=8, fraction=0.25)),
    # Amendment 1 of PREREGISTRATION.md: strong models, outside the analysis of record.
    "fast64-ep12-s0": ("fast:64", Recipe(epochs=12)),
    "fast64-ep12-s1": ("fast:64", Recipe(epochs=12, seed=1)),
    "fast64-ep12-s2": ("fast:64", Recipe(epochs=12, seed=2)),
}
PREREGISTERED = list(ZOO)[:14]  # the analysis of record's models
TRAINING = dict(lr=0.2, batch_size=512, crop_padding=4, flip=True, weight_decay=5e-4)


def precision() -> str:
    """bf16 where this CPU has bf16 matrix units, fp32 elsewhere: the zoo's precision for training
    and scoring alike (PREREGISTRATION.md; it predates ``--precision auto``'s fp32 training)."""
    import torch

    from toolkit.hardware import bf16_units

    return "bf16" if bf16_units(torch.device("cpu"))[0] else "fp32"


def training_settings() -> dict:
    """:data:`TRAINING` at the zoo's :func:`precision`."""
    return {**TRAINING, "precision": precision()}


def load_data(archive: Path):
    from toolkit.plugins import get_registry

    if not archive.is_file():
        raise SystemExit(f"build.py: no CIFAR-10 archive at {archive}; pass --archive PATH "
                         "(the zoo needs the real images)")
    return get_registry("dataset").get("imagefolder").obj(archive, False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "weights")
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--only", default=None, help="comma-separated model names (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    only = digits.chosen_models(parser, ZOO, args.only)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    build(args.out, args.archive, only)
    return 0


def build(out: Path, archive: Path, only: list[str] | None = None, after=None) -> None:
    """Train the models of the zoo (or ``only`` those) missing from ``out``; ``after(name, row)``
    is called for each once its weights exist."""
    digits.use_plugins(*PLUGINS)
    digits.build(ZOO, load_data(archive), out, only, training_settings(), after)


if __name__ == "__main__":
    sys.exit(main())
