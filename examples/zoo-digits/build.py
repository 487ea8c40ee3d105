"""Build the digits zoo: 48 classifiers, trained deterministically (design: PREREGISTRATION.md).

    python examples/zoo-digits/build.py                      # all 48, into examples/zoo-digits/weights/
    python examples/zoo-digits/build.py --only cnn8-base-s0,mlp32-ep1 --out /tmp/zoo

Each model is written as ``OUT/<name>.pt``: the ``state_dict`` of the toolkit's normalising
wrapper (the network under ``model.``, and the ``mean`` and ``std`` of the images it trained on),
which ``--checkpoints`` and ``rank`` load with ``torch.load(weights_only=True)``. ``OUT/zoo.json``
lists every model: its name, the toolkit model name, the recipe, its test accuracy and how long it
trained. A model whose file exists is not trained again, so an interrupted build resumes; the
weights stay out of git (``.gitignore``) and this script makes them again, bit for bit on the same
CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from toolkit import ImageDataset
from toolkit.model import NormalizedClassifier
from toolkit.plugins import get_plugin_manager, get_registry
from toolkit.training import TrainingSettings, nested_stratified_subsets, train_through_intervals

HERE = Path(__file__).resolve().parent

# zoo name prefix -> toolkit model name (zoo_models.py registers cnn:N and mlp:N)
ARCHITECTURES = {"resnet18": "resnet18", "mobilenet": "timm:mobilenetv3_small_050",
                 "cnn8": "cnn:8", "cnn32": "cnn:32", "mlp32": "mlp:32", "mlp256": "mlp:256"}


@dataclasses.dataclass(frozen=True)
class Recipe:
    epochs: int = 10
    noise: float = 0.0      # fraction of training labels replaced by another class
    fraction: float = 1.0   # stratified share of the training set used
    seed: int = 0           # initialisation, batch order, augmentation, noise and subset draws


VARIANTS = {"base-s0": Recipe(), "base-s1": Recipe(seed=1), "base-s2": Recipe(seed=2),
            "ep1": Recipe(epochs=1), "ep3": Recipe(epochs=3),
            "noise20": Recipe(noise=0.2), "noise50": Recipe(noise=0.5), "data25": Recipe(fraction=0.25)}
# The toolkit's digits training defaults (plugins/datasets.py, DIGITS_DEFAULTS).
TRAINING = dict(lr=0.1, batch_size=32, crop_padding=1, flip=False)


def use_plugins(*files: Path) -> None:
    """Register plugin files in this process's plugin manager, each once (as ``TOOLKIT_PLUGINS``
    does when the manager starts, which may be over by now: a test, a notebook): the zoo's
    architectures, for training and ``rank`` alike. A file already loaded is left alone."""
    import importlib.util

    pm = get_plugin_manager()
    loaded = {Path(getattr(plugin, "__file__", "") or "").resolve() for plugin in pm.get_plugins()}
    for path in (Path(f).resolve() for f in files):
        if path not in loaded:
            spec = importlib.util.spec_from_file_location(f"toolkit_zoo_plugins.{path.parent.name}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            pm.register(module, name=str(path))


def zoo() -> dict[str, tuple[str, Recipe]]:
    """Every model of the zoo: name -> (toolkit model name, recipe)."""
    return {f"{arch}-{variant}": (model, recipe) for arch, model in ARCHITECTURES.items()
            for variant, recipe in VARIANTS.items()}


def training_data(data: ImageDataset, recipe: Recipe) -> ImageDataset:
    """``data`` with the recipe's share of the training set and its label noise."""
    generator = torch.Generator().manual_seed(10_000 + recipe.seed)
    images, labels = data.train_images, data.train_labels.clone()
    if recipe.fraction < 1:
        keep = nested_stratified_subsets(labels, [recipe.fraction], generator)[0]
        images, labels = images[keep], labels[keep]
    if recipe.noise > 0:
        n = len(data.class_names)
        flip = torch.randperm(len(labels), generator=generator)[:round(recipe.noise * len(labels))]
        labels[flip] = (labels[flip] + torch.randint(1, n, (len(flip),), generator=generator)) % n
    return ImageDataset(data.name, images, labels, data.test_images, data.test_labels,
                        data.class_names)


def train(model_name: str, recipe: Recipe, data: ImageDataset,
          training: dict | None = None) -> tuple[NormalizedClassifier, float]:
    """The trained classifier and its test accuracy (``training``: TrainingSettings' values,
    default :data:`TRAINING`)."""
    data = training_data(data, recipe)
    torch.manual_seed(recipe.seed)
    net = get_registry("model").get(model_name).obj(len(data.class_names), data.in_chans, data.image_size)
    model = NormalizedClassifier(net, data.mean, data.std)
    settings = TrainingSettings(epochs=recipe.epochs, **(TRAINING if training is None else training))
    *_, stage = train_through_intervals(model, data, [1.0], "data", settings, recipe.seed, "cpu")
    return model.eval(), stage.test_accuracy


def build(models: dict[str, tuple[str, Recipe]], data: ImageDataset, out: Path,
          only: list[str] | None = None, training: dict | None = None, after=None) -> None:
    """Train every model of ``models`` (or ``only`` those) whose file is missing from ``out``,
    writing ``out/<name>.pt`` and its row of ``out/zoo.json`` as each one finishes; ``after(name,
    row)`` is called for each of them once its weights exist (the CIFAR-10 zoo scores it there)."""
    use_plugins(HERE / "zoo_models.py")
    chosen = list(models) if only is None else only
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "zoo.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for number, name in enumerate(chosen, 1):
        path = out / f"{name}.pt"
        if not (path.is_file() and name in manifest):
            manifest[name] = _train_one(*models[name], data, path, training)
            manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")
            print(f"[{number}/{len(chosen)}] {name}: test accuracy {manifest[name]['test_accuracy']:.3f} "
                  f"({manifest[name]['train_seconds']:.1f} s)", file=sys.stderr)
        if after is not None:
            after(name, manifest[name])


def _train_one(model_name: str, recipe: Recipe, data: ImageDataset, path: Path,
               training: dict | None) -> dict:
    """Train one model, write its weights to ``path`` (atomically) and return its manifest row."""
    clock = time.perf_counter()
    model, test_accuracy = train(model_name, recipe, data, training)
    seconds = time.perf_counter() - clock
    tmp = path.with_suffix(".pt.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    row = {"model": model_name, **dataclasses.asdict(recipe), "file": path.name,
           "test_accuracy": round(test_accuracy, 6), "train_seconds": round(seconds, 1),
           "threads": torch.get_num_threads()}
    if training and "precision" in training:
        row["precision"] = training["precision"]
    return row


def chosen_models(parser: argparse.ArgumentParser, models: dict, only: str | None) -> list[str] | None:
    """The names of ``--only`` (None: all), or the parser's error naming the zoo's models."""
    if only is None:
        return None
    chosen = [n.strip() for n in only.split(",")]
    unknown = [name for name in chosen if name not in models]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; the zoo has {', '.join(models)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "weights")
    parser.add_argument("--only", default=None, help="comma-separated model names (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    models = zoo()
    only = chosen_models(parser, models, args.only)
    if args.threads:
        torch.set_num_threads(args.threads)
    build(models, get_registry("dataset").get("digits").obj(None, False), args.out, only)
    return 0

if __name__ == "__main__":
    sys.exit(main())
