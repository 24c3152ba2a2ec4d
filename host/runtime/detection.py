"""SSD's post-processing on the host, vectorized numpy: prior boxes, box decoding, scores, per-class NMS, top-k.

* **Priors** (:func:`prior_boxes`) follow torchvision's ``DefaultBoxGenerator`` as ``ssd300_vgg16`` sets it up:
  scales 0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05 (torchvision's COCO scales, not the paper's 0.2 .. 0.9),
  aspect ratios [2], [2, 3], [2, 3], [2, 3], [2], [2], steps 8, 16, 32, 64, 100, 300. Per position of map k:
  (s_k, s_k), (s', s') with s' = sqrt(s_k * s_k+1), then (s_k sqrt(a), s_k / sqrt(a)) and its transpose for
  each ratio a; widths and heights clipped to [0, 1]. Centres ((i + 0.5) * step / image_size), positions row by
  row, the boxes of a position together: the order of the heads' rows.
* **Decoding** (:func:`decode_boxes`): (dx, dy, dw, dh) against a prior (cx, cy, w, h) with variances (0.1, 0.2):
  cx' = cx + 0.1 dx w, w' = w exp(min(0.2 dw, log(1000 / 16))) (torchvision's BoxCoder clamp), likewise y;
  corners (x1, y1, x2, y2) = centre -+ half the size, clipped to [0, 1] (normalized to the input image).
* **Scores**: softmax over the classes; class 0 is the background and never detected.
* **Selection** (:func:`postprocess`), torchvision's ``SSD.postprocess_detections``: per class, the scores above
  ``score_threshold``, the ``candidates_per_class`` best of them; then NMS over all candidates per class; then
  the ``max_detections`` best.
* **NMS** (:func:`batched_nms`) has torchvision's ``batched_nms`` semantics: candidates in order of decreasing
  score, equal scores in order of their index (a stable sort); a candidate is suppressed by a kept one of its
  class whose IoU with it is greater than the threshold (equal does not suppress); IoU is intersection over
  union, 0 where the union is 0 (two empty boxes never suppress each other; torchvision computes 0 / 0 there,
  NaN, which does not suppress either). Classes are kept apart by the coordinate offset trick: every box is
  shifted by class * (floor(largest coordinate) + 1), so boxes of different classes never overlap (the
  coordinates are non-negative here: clipped to [0, 1]). torchvision shifts by largest coordinate + 1; an integer
  shift in float64 keeps dyadic coordinates exact, so an IoU of exactly the threshold stays exact (and kept).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["Detection", "DetectionConfig", "PriorConfig", "batched_nms", "box_iou", "decode_boxes", "pairwise_iou",
           "postprocess", "prior_boxes", "softmax_scores"]

#: torchvision's BoxCoder clamp on dw and dh: boxes at most 1000/16 times their prior.
_BOX_CLIP = float(np.log(1000.0 / 16))


@dataclass(frozen=True)
class PriorConfig:
    """SSD300's default boxes (torchvision's ``DefaultBoxGenerator`` for ``ssd300_vgg16``)."""

    image_size: int = 300
    feature_maps: tuple[int, ...] = (38, 19, 10, 5, 3, 1)
    steps: tuple[int, ...] = (8, 16, 32, 64, 100, 300)
    aspect_ratios: tuple[tuple[int, ...], ...] = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
    scales: tuple[float, ...] = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)

    def __post_init__(self) -> None:
        n = len(self.feature_maps)
        if not (len(self.steps) == len(self.aspect_ratios) == n and len(self.scales) == n + 1):
            raise ValueError(f"priors: {n} feature maps need as many steps and aspect ratio lists and {n + 1} scales")

    @property
    def boxes_per_location(self) -> tuple[int, ...]:
        return tuple(2 + 2 * len(ratios) for ratios in self.aspect_ratios)

    @property
    def count(self) -> int:
        return sum(side * side * boxes for side, boxes in zip(self.feature_maps, self.boxes_per_location))

    @classmethod
    def from_dict(cls, data: dict) -> "PriorConfig":
        return cls(data["image_size"], tuple(data["feature_maps"]), tuple(data["steps"]),
                   tuple(tuple(r) for r in data["aspect_ratios"]), tuple(data["scales"]))


@dataclass(frozen=True)
class DetectionConfig:
    """A detector's post-processing: its priors, variances and selection (torchvision's SSD300 defaults, but
    ``max_detections`` 100 as TF's detection models answer)."""

    priors: PriorConfig = field(default_factory=PriorConfig)
    variances: tuple[float, float] = (0.1, 0.2)
    score_threshold: float = 0.01
    nms_threshold: float = 0.45
    candidates_per_class: int = 400
    max_detections: int = 100

    def to_dict(self) -> dict:
        """JSON's types (lists, not tuples), as a manifest reads back."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "DetectionConfig":
        return cls(PriorConfig.from_dict(data["priors"]), tuple(data["variances"]), data["score_threshold"],
                   data["nms_threshold"], data["candidates_per_class"], data["max_detections"])


@dataclass
class Detection:
    """One image's detections, best first: ``boxes`` [K, 4] as (x1, y1, x2, y2) normalized to the input image,
    ``scores`` [K], ``classes`` [K] (indices into the labels; 0, the background, never appears)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def prior_boxes(config: PriorConfig = PriorConfig()) -> np.ndarray:
    """The priors [P, 4] as (cx, cy, w, h), normalized, in the order of the heads' rows."""
    parts = []
    for k, (side, step, ratios) in enumerate(zip(config.feature_maps, config.steps, config.aspect_ratios)):
        scale, bigger = config.scales[k], np.sqrt(config.scales[k] * config.scales[k + 1])
        sizes = [(scale, scale), (bigger, bigger)]
        for ratio in ratios:
            root = np.sqrt(ratio)
            sizes += [(scale * root, scale / root), (scale / root, scale * root)]
        sizes = np.clip(np.array(sizes, np.float64), 0, 1)
        centres = (np.arange(side) + 0.5) * step / config.image_size
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        grid = np.stack([cx.ravel(), cy.ravel()], axis=1)  # positions row by row
        parts.append(np.concatenate([np.repeat(grid, len(sizes), axis=0), np.tile(sizes, (side * side, 1))], axis=1))
    return np.concatenate(parts)


def decode_boxes(regressions: np.ndarray, priors: np.ndarray, variances=(0.1, 0.2)) -> np.ndarray:
    """Regressions [..., P, 4] (dx, dy, dw, dh) against ``priors`` [P, 4] -> corners [..., P, 4] (x1, y1, x2, y2),
    clipped to [0, 1]."""
    r = np.asarray(regressions, np.float64)
    centre = priors[:, :2] + r[..., :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * np.exp(np.minimum(r[..., 2:] * variances[1], _BOX_CLIP))
    return np.clip(np.concatenate([centre - 0.5 * size, centre + 0.5 * size], axis=-1), 0.0, 1.0)


def softmax_scores(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    x = np.asarray(logits, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [A, B] of every box of ``a`` [A, 4] with every box of ``b`` [B, 4] (x1, y1, x2, y2); 0 where the union
    is 0."""
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None] + ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None] \
        - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with each of ``boxes`` [K, 4]."""
    return pairwise_iou(np.asarray(box)[None], np.asarray(boxes))[0]


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, threshold: float,
                limit: int | None = None, block: int = 256) -> np.ndarray:
    """Indices of the boxes per-class NMS keeps, best first (see the module's docstring); at most ``limit``.

    The candidates go by in blocks of ``block`` in score order: those a box kept from an earlier block suppresses
    go at once (one IoU matrix), then the block's own greedy pass over its IoU matrix; a limit stops it early."""
    boxes = np.asarray(boxes, np.float64)
    if not len(boxes):
        return np.zeros(0, np.int64)
    shifted = boxes + (np.asarray(classes, np.float64) * (np.floor(boxes.max()) + 1))[:, None]
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    limit = len(order) if limit is None else limit
    keep: list[int] = []
    for start in range(0, len(order), block):
        if len(keep) >= limit:
            break
        chunk = order[start:start + block]
        if keep:
            chunk = chunk[~(pairwise_iou(shifted[chunk], shifted[keep]) > threshold).any(axis=1)]
        overlapping = pairwise_iou(shifted[chunk], shifted[chunk]) > threshold
        alive = np.ones(len(chunk), bool)
        for i in range(len(chunk)):
            if alive[i]:
                keep.append(int(chunk[i]))
                if len(keep) == limit:
                    break
                alive[i + 1:] &= ~overlapping[i, i + 1:]
    return np.array(keep, np.int64)


def postprocess(regressions: np.ndarray, logits: np.ndarray, priors: np.ndarray,
                config: DetectionConfig = DetectionConfig()) -> list[Detection]:
    """A batch's head outputs, regressions [N, P, 4] and logits [N, P, classes], as each image's detections."""
    boxes, scores = decode_boxes(regressions, priors, config.variances), softmax_scores(logits)
    results = []
    for image_boxes, image_scores in zip(boxes, scores):
        foreground = image_scores[:, 1:]
        passing = foreground > config.score_threshold
        classes = np.nonzero(passing.any(axis=0))[0]
        candidates = []
        for c in classes:  # the best candidates_per_class of each class, best first, ties by prior index
            rows = np.nonzero(passing[:, c])[0]
            best = rows[np.argsort(-foreground[rows, c], kind="stable")[:config.candidates_per_class]]
            candidates.append(np.stack([best, np.full(len(best), c + 1)], axis=1))
        chosen = np.concatenate(candidates) if candidates else np.zeros((0, 2), np.int64)
        rows, labels = chosen[:, 0], chosen[:, 1]
        kept = batched_nms(image_boxes[rows], image_scores[rows, labels], labels, config.nms_threshold,
                           config.max_detections)
        results.append(Detection(image_boxes[rows[kept]], image_scores[rows[kept], labels[kept]], labels[kept]))
    return results
