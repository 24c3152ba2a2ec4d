"""`mvu finetune`: a head trained on a featurizer's features classifies held-out photos of coloured
objects, runs bit-exact on the accelerator's backends, reuses cached features, and reports clearly."""

from __future__ import annotations

import json

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
