"""`mvu run --draw` and `mvu eval --annotations` on a detector; average precision from its definition."""

import json

import numpy as np
import pytest
from PIL import Image

from mvu.host.compiler.recipes import demo_photos
from mvu.host.model.package import load_package
from mvu.host.runtime.detect import Detector, to_image_pixels
from mvu.host.tools.cli import main
from mvu.host.tools.detection_eval import average_precision


def test_average_precision_by_hand():
    """Two annotations; detections 0.9 (IoU 0.81 with the first), 0.8 (nothing), 0.7 (the second): precision 1,
    1/2, 2/3 at recall 1/2, 1/2, 1; made non-increasing 1, 2/3, 2/3; the 51 recall points up to 0.5 read 1, the
    50 above read 2/3."""
    truths = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)]
    detections = [(np.array([[1, 1, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], float), np.array([0.9, 0.8, 0.7]))]
    assert average_precision(detections, truths, 0.5) == pytest.approx((51 + 50 * 2 / 3) / 101)
    # at 0.85 only the third is a hit: precision 1/3 at recall 1/2 (and before it), 0 beyond
    assert average_precision(detections, truths, 0.85) == pytest.approx(51 / 3 / 101)
    assert average_precision(detections, [np.zeros((0, 4))], 0.5) is None


def test_average_precision_takes_each_annotation_once():
    truths = [np.array([[0, 0, 10, 10]], float), np.zeros((0, 4))]
    twice = [(np.array([[0, 0, 10, 10], [0, 0, 10, 10]], float), np.array([0.9, 0.8])),
             (np.array([[0, 0, 10, 10]], float), np.array([0.95]))]  # an image without annotations: a miss
    # 0.95 false, 0.9 true (recall 1, precision 1/2), 0.8 false: every recall point reads 1/2
    assert average_precision(twice, truths, 0.5) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for path in demo_photos()[:2]:
        Image.open(path).convert("RGB").save(folder / f"{path.stem}.png")
    return folder


def test_run_prints_and_draws(small_detector_path, photos, tmp_path, capsys):
    image = sorted(photos.iterdir())[0]
    out = tmp_path / "boxes.png"
    assert main(["run", str(small_detector_path), str(image), "--draw", str(out), "--top", "3", "--json",
                 "--backend", "numpy"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert len(result["detections"]) == 3 and result["drawn"] == str(out)
    assert all(entry["label"].startswith("class ") for entry in result["detections"])
    drawn, original = np.asarray(Image.open(out).convert("RGB")), np.asarray(Image.open(image).convert("RGB"))
    changed = (drawn != original).any(axis=2)
    assert drawn.shape == original.shape and 0.001 < changed.mean() < 0.5  # outlines and labels, not fills
    x1, y1, x2, y2 = (int(round(v)) for v in result["detections"][0]["box"])
    bottom = min(y2, drawn.shape[0] - 1)
    assert changed[bottom - 1:bottom + 1, x1:x2 + 1].any(axis=0).mean() > 0.9  # the best box's bottom edge


def _annotations(package_path, photos, path, extra: bool):
    """The detector's own detections above 0.3 as annotations (boxes in pixels), and with ``extra`` one more
    annotation of the best detection's class that nothing detects."""
    package = load_package(package_path)
    detector = Detector(package, "numpy")
    images, annotations = [], []
    for index, image in enumerate(sorted(photos.iterdir())):
        (found,) = detector.detect([image])
        images.append({"id": index + 10, "file_name": image.name, "width": found.size[0], "height": found.size[1]})
        keep = found.detection.scores > 0.3
        for box, label in zip(to_image_pixels(found.detection.boxes[keep], found.size, detector.recipe),
                              found.detection.classes[keep]):
            annotations.append({"image_id": index + 10, "category_id": int(label) * 3,
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    if extra:
        annotations.append({"image_id": 10, "category_id": annotations[0]["category_id"], "bbox": [0, 0, 2, 2]})
    categories = [{"id": 3 * i, "name": name} for i, name in enumerate(package.labels) if i]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return annotations


def test_eval_reports_map_against_coco_annotations(small_detector_path, photos, tmp_path, capsys):
    annotations = tmp_path / "instances.json"
    truth = _annotations(small_detector_path, photos, annotations, extra=False)
    assert len(truth) >= 2
    arguments = ["eval", str(small_detector_path), "--images", str(photos), "--annotations", str(annotations),
                 "--json"]
    assert main(arguments) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 2 and report["map50"] == pytest.approx(1.0) and report["map"] == pytest.approx(1.0)

    truth = _annotations(small_detector_path, photos, annotations, extra=True)
    assert main(arguments) == 0
    report = json.loads(capsys.readouterr().out)
    label = load_package(small_detector_path).labels[truth[0]["category_id"] // 3]
    found = sum(entry["category_id"] == truth[0]["category_id"] for entry in truth) - 1
    recall = found / (found + 1)  # precision 1 up to it, nothing beyond
    assert report["per_class"][label]["ap50"] == pytest.approx((np.floor(recall * 100 + 1e-9) + 1) / 101)
    assert report["map50"] < 1.0


def test_eval_refuses_annotations_without_the_packages_classes(small_detector_path, photos, tmp_path):
    annotations = tmp_path / "other.json"
    annotations.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}))
    with pytest.raises(SystemExit, match="none of its categories .*cat.* is a class of the package"):
        main(["eval", str(small_detector_path), "--images", str(photos), "--annotations", str(annotations)])
    with pytest.raises(SystemExit, match="not COCO-style annotations"):
        main(["eval", str(small_detector_path), "--images", str(photos), "--annotations", str(photos)])
