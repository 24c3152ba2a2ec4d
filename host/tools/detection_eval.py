"""Mean average precision of a detector on a folder of images with COCO-style annotations, from the definition.

Annotations are COCO's JSON: ``images`` (``id``, ``file_name``), ``annotations`` (``image_id``, ``category_id``,
``bbox`` [x, y, width, height] in pixels, optional ``iscrowd``) and ``categories`` (``id``, ``name``). Categories
are matched to the package's labels by name.

Per category and IoU threshold t, as COCO computes it (one area range, every detection the detector returns): the
category's detections of all images in order of decreasing score (equal scores in image and rank order); each is
a true positive when an annotation of its image and category that no earlier detection took overlaps it with IoU
>= t (the one overlapping most), else a false positive. Precision is made non-increasing in recall (each point
takes the best precision at its recall or beyond), then AP is the mean over the 101 recall points 0, 0.01, .., 1
of the precision at the first point whose recall reaches it (0 when none does). mAP is the mean over the
categories with annotations. Crowd annotations (``iscrowd`` 1) are left out, so a detection on one is a false
positive (COCO ignores such detections instead).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from mvu.host.model.package import ModelPackage
from mvu.host.runtime.detection import pairwise_iou

__all__ = ["IOU_THRESHOLDS", "AnnotationError", "average_precision", "evaluate_detector", "read_annotations"]

#: COCO's IoU thresholds 0.5, 0.55, .., 0.95.
IOU_THRESHOLDS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2))


class AnnotationError(ValueError):
    """Annotations that cannot be read or do not fit the images or the package; the message says which."""


def average_precision(detections: list[tuple[np.ndarray, np.ndarray]], truths: list[np.ndarray],
                      threshold: float) -> float | None:
    """One category's AP: per image its detections (boxes [D, 4], scores [D]) and annotations (boxes [G, 4]);
    None when no image has an annotation."""
    total = sum(len(t) for t in truths)
    if total == 0:
        return None
    entries = [(-score, image, rank) for image, (_, scores) in enumerate(detections) for rank, score in
               enumerate(scores)]
    entries.sort()
    taken = [np.zeros(len(t), bool) for t in truths]
    overlaps = [pairwise_iou(boxes, t) if len(t) and len(boxes) else None
                for (boxes, _), t in zip(detections, truths)]
    hits = np.zeros(len(entries), bool)
    for index, (_, image, rank) in enumerate(entries):
        if overlaps[image] is None:
            continue
        iou = np.where(taken[image], -1.0, overlaps[image][rank])
        best = int(np.argmax(iou))
        if iou[best] >= threshold:
            taken[image][best] = hits[index] = True
    true_positives = np.cumsum(hits)
    recall = true_positives / total
    precision = true_positives / np.arange(1, len(entries) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    points = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return float(np.mean([precision[p] if p < len(precision) else 0.0 for p in points]))


def read_annotations(path: str | Path, folder: str | Path, labels: list[str]) -> tuple[list[Path], dict]:
    """The images the annotations list (in the folder) and, per package class index, each image's boxes
    (x1, y1, x2, y2)."""
    try:
        data = json.loads(Path(path).read_text())
        images = {entry["id"]: Path(folder) / entry["file_name"] for entry in data["images"]}
        categories = {entry["id"]: entry["name"] for entry in data["categories"]}
        annotations = data["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise AnnotationError(f"{path}: not COCO-style annotations with images, annotations and categories "
                              f"({type(error).__name__}: {error})") from None
    index = {label: i for i, label in enumerate(labels)}
    known = {cid: index[name] for cid, name in categories.items() if name in index}
    if not known:
        raise AnnotationError(f"{path}: none of its categories ({', '.join(sorted(categories.values())[:5])}, ..) is "
                              f"a class of the package ({', '.join(labels[1:6])}, ..)")
    missing = [str(p) for p in images.values() if not p.is_file()]
    if missing:
        raise AnnotationError(f"{path}: {len(missing)} listed images are not in {folder}: {', '.join(missing[:3])}")
    order = list(images)
    boxes: dict = {}
    for entry in annotations:
        if entry.get("iscrowd", 0) or entry["category_id"] not in known:
            continue
        if entry["image_id"] not in images:
            raise AnnotationError(f"{path}: an annotation names image {entry['image_id']}, which it does not list")
        x, y, w, h = entry["bbox"]
        boxes.setdefault(known[entry["category_id"]], {}).setdefault(order.index(entry["image_id"]), []).append(
            [x, y, x + w, y + h])
    return [images[i] for i in order], boxes


def evaluate_detector(package: ModelPackage, folder: str | Path, annotations: str | Path, *,
                      backend: str = "numpy", config=None, executor=None, limit: int | None = None,
                      progress: bool = True) -> dict:
    """mAP@0.5 and mAP@[.5:.95] of the package's detections (boxes in image pixels) against the annotations."""
    from mvu.host.runtime.detect import Detector, to_image_pixels

    paths, truth = read_annotations(annotations, folder, package.labels)
    paths = paths[:limit]
    detector = Detector(package, backend, config, executor=executor)
    found = []
    for index, path in enumerate(paths):
        (result,) = detector.detect([path])
        found.append((to_image_pixels(result.detection.boxes, result.size, detector.recipe), result.detection))
        if progress:
            print(f"\rdetecting {index + 1}/{len(paths)}", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    per_class = {}
    for label, images in truth.items():
        truths = [np.array(images.get(i, np.zeros((0, 4))), np.float64).reshape(-1, 4) for i in range(len(paths))]
        detections = [(boxes[d.classes == label], d.scores[d.classes == label]) for boxes, d in found]
        aps = [average_precision(detections, truths, t) for t in IOU_THRESHOLDS]
        if aps[0] is not None:
            per_class[package.labels[label]] = {"ap50": aps[0], "ap": float(np.mean(aps))}
    mean = lambda key: float(np.mean([v[key] for v in per_class.values()])) if per_class else 0.0  # noqa: E731
    return {"images": len(paths), "backend": backend, "categories": len(per_class), "map50": mean("ap50"),
            "map": mean("ap"), "per_class": per_class}
