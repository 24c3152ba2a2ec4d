"""`mvu finetune`: a head trained on a featurizer's features classifies held-out photos of coloured
objects, runs bit-exact on the accelerator's backends, reuses cached features, and reports clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mvu.host.model.package import load_package
from mvu.host.runtime.runner import ModelRunner
from mvu.host.tools import finetune as finetune_module
from mvu.host.tools.cli import main
from mvu.host.tools.finetune import FinetuneError, read_dataset

COLOURS = {"red": (200, 40, 30), "green": (40, 170, 60), "blue": (30, 60, 200)}


def _photo(colour, rng: np.random.Generator) -> Image.Image:
    """A noisy background with a blob of ``colour`` somewhere."""
    pixels = rng.integers(90, 160, (48, 48, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    x, y, r = rng.integers(8, 40), rng.integers(8, 40), rng.integers(10, 18)
    jitter = rng.integers(-25, 25, 3)
    ImageDraw.Draw(image).ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in np.clip(np.add(colour, jitter), 0, 255)))
    return image


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(5)
    for name, colour in COLOURS.items():
        (folder / name).mkdir()
        for index in range(15):
            _photo(colour, rng).save(folder / name / f"{index}.png")
    return folder


def test_finetune_learns_the_classes_and_the_package_serves(photos, toy_package_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MVU_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "colours.mvu"
    plot = tmp_path / "confusion.png"
    assert main(["finetune", "--featurizer", str(toy_package_path), "--images", str(photos), "-o", str(out),
                 "--plot", str(plot), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.split("confusion matrix plotted")[0])
    assert report["classes"] == ["blue", "green", "red"] and report["images"] == 45
    assert report["train_accuracy"] >= 0.9 and report["validation_accuracy"] >= 0.8, report
    assert sum(map(sum, report["validation_confusion"])) == 9  # 3 of 15 per class held out
    assert plot.stat().st_size > 1000

    package = load_package(out)
    assert package.labels == ["blue", "green", "red"] and package.model.layers[-1].placement == "accelerator"
    new = tmp_path / "new_red.png"
    _photo(COLOURS["red"], np.random.default_rng(99)).save(new)
    assert main(["run", str(out), str(new), "--backend", "reference", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["label"] == "red"
    image = np.random.default_rng(1).integers(0, 256, (2, *package.model.input_shape[1:]), dtype=np.uint8)
    np.testing.assert_array_equal(ModelRunner(package.model, package.config, "reference").run_batch(image),
                                  ModelRunner(package.model, package.config, "numpy").run_batch(image))

    # the features come from the cache the second time: no classifier is built
    monkeypatch.setattr(finetune_module, "ModelRunner", lambda *a, **k: pytest.fail("features not cached"))
    assert main(["finetune", "--featurizer", str(toy_package_path), "--images", str(photos),
                 "-o", str(tmp_path / "again.mvu")]) == 0
    assert "validation accuracy" in capsys.readouterr().out


def test_bad_data_sets_and_layers_are_clear_errors(photos, toy_package_path, tmp_path):
    lonely = tmp_path / "one"
    (lonely / "red").mkdir(parents=True)
    _photo(COLOURS["red"], np.random.default_rng(0)).save(lonely / "red" / "0.png")
    with pytest.raises(FinetuneError, match="needs images of at least two classes"):
        read_dataset(lonely)
    with pytest.raises(SystemExit, match="mvu: the featurizer has no layer or tensor 'nope'"):
        main(["finetune", "--featurizer", str(toy_package_path), "--images", str(photos), "-o",
              str(tmp_path / "x.mvu"), "--layer", "nope"])


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: A coarse task over ImageNet's classes: (name, class index ranges)
COARSE = (("bird", ((7, 24), (80, 100), (127, 146))), ("dog", ((151, 268),)), ("other animal", ((0, 397),)),
          ("object", ((398, 999),)))


def _coarse(index: int) -> str:
    return next(name for name, ranges in COARSE if any(low <= index <= high for low, high in ranges))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "images" / "labels.csv").is_file(), reason=f"shared data absent ({SHARED})")
def test_transfer_learning_on_real_photos(tmp_path, capsys):
    """EfficientNet-Lite0 (real weights) as the featurizer of birds / dogs / other animals / objects, from the
    shared ImageNet photos split by a fixed seed: the head learns the task well above chance, the features
    are bit-identical on the RTL, and the package answers with the new labels."""
    import csv

    from mvu.hdl.contract.config import HardwareConfig
    from mvu.host.compiler.recipes import cached_package
    from mvu.host.model.package import save_package
    from mvu.host.runtime.classify import Classifier
    from mvu.host.runtime.preprocess import PreprocessRecipe, preprocess_batch
    from mvu.host.tools.finetune import finetune

    folder = tmp_path / "coarse"
    with open(SHARED / "images" / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            target = folder / _coarse(int(row["class_index"])) / row["filename"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(SHARED / "images" / row["filename"])
    dataset = read_dataset(folder)
    featurizer = cached_package("efficientnet-lite0", HardwareConfig())
    package, report = finetune(featurizer, dataset, name="coarse", backend="reference", validation_fraction=0.25,
                               seed=0, progress=False)
    with capsys.disabled():
        print(f"\ncoarse task on {report['images']} shared photos, classes {report['classes']}: train accuracy "
              f"{report['train_accuracy']:.3f}, validation accuracy {report['validation_accuracy']:.3f}")
        for name, row in zip(report["classes"], report["validation_confusion"]):
            print(f"  {name:<13} {row}")
    confusion = np.array(report["validation_confusion"])
    balanced = float(np.mean(np.diag(confusion) / confusion.sum(axis=1)))
    with capsys.disabled():
        print(f"  balanced validation accuracy {balanced:.3f} (chance {1 / len(COARSE):.2f})")
    # Each shared photo is of another ImageNet class: the validation photos' classes were never seen in
    # training, so this measures generalization within the coarse categories; measured 0.709 (lr 0.003).
    assert balanced >= 0.5, report

    images = preprocess_batch(dataset.paths[::70], PreprocessRecipe.from_dict(featurizer.preprocessing))
    features = {backend: Classifier(featurizer, backend).logits_and_features(images)[1]
                for backend in ("reference", "verilator")}  # not from the features cache
    assert Classifier(featurizer, "reference").features_tensor == report["features"]
    np.testing.assert_array_equal(features["verilator"], features["reference"])

    path = save_package(package, tmp_path / "coarse.mvu")
    assert main(["run", str(path), str(dataset.paths[0]), "--backend", "reference", "--top", "4", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert {entry["label"] for entry in top} <= {name for name, _ in COARSE} and len(top) == 4
