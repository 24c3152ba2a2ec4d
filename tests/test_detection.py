"""SSD post-processing (mvu.host.runtime.detection) against plain loops written from the definitions."""

import math

import numpy as np
import pytest

from mvu.host.runtime.detection import (
    DetectionConfig,
    PriorConfig,
    batched_nms,
    decode_boxes,
    postprocess,
    prior_boxes,
    softmax_scores,
)


def _loop_priors(config: PriorConfig) -> list[list[float]]:
    out = []
    for k, side in enumerate(config.feature_maps):
        s, s2 = config.scales[k], config.scales[k + 1]
        sizes = [(s, s), (math.sqrt(s * s2), math.sqrt(s * s2))]
        for a in config.aspect_ratios[k]:
            sizes += [(s * math.sqrt(a), s / math.sqrt(a)), (s / math.sqrt(a), s * math.sqrt(a))]
        for y in range(side):
            for x in range(side):
                for w, h in sizes:
                    out.append([(x + 0.5) * config.steps[k] / config.image_size,
                                (y + 0.5) * config.steps[k] / config.image_size, min(w, 1.0), min(h, 1.0)])
    return out


def _loop_decode(r, prior, variances=(0.1, 0.2)):
    cx, cy, w, h = prior
    x = cx + r[0] * variances[0] * w
    y = cy + r[1] * variances[0] * h
    bw = w * math.exp(min(r[2] * variances[1], math.log(1000 / 16)))
    bh = h * math.exp(min(r[3] * variances[1], math.log(1000 / 16)))
    return [min(max(v, 0.0), 1.0) for v in (x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2)]


def _loop_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _loop_nms(boxes, scores, classes, threshold):
    """Greedy NMS class by class, without any offset: the definition batched_nms must equal."""
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(classes[j] != classes[i] or _loop_iou(boxes[i], boxes[j]) <= threshold for j in kept):
            kept.append(i)
    return kept


def test_priors_are_torchvision_ssd300_default_boxes():
    config = PriorConfig()
    priors = prior_boxes(config)
    assert priors.shape == (8732, 4) and config.count == 8732
    np.testing.assert_allclose(priors, _loop_priors(config), rtol=0, atol=1e-12)


def test_decoding_equals_the_definition():
    rng = np.random.default_rng(1)
    priors = prior_boxes()[::37]
    regressions = rng.normal(0, 3, (2, len(priors), 4))
    regressions[0, :5, 2:] = 60.0  # past the BoxCoder clamp
    got = decode_boxes(regressions, priors)
    want = [[_loop_decode(r, p) for r, p in zip(image, priors)] for image in regressions]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def _random_case(rng, n, classes):
    """Clustered boxes (many overlaps), repeated scores, copies of boxes in other classes, empty boxes, and boxes
    whose IoU is exactly 0.5 (dyadic coordinates)."""
    centres = rng.uniform(0.2, 0.8, (n, 2))
    sizes = rng.uniform(0.0, 0.4, (n, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).clip(0, 1)
    boxes[::7, 2:] = boxes[::7, :2]  # zero area
    boxes[3::11, 2] = boxes[3::11, 0]  # zero width only
    scores = np.round(rng.uniform(0, 1, n), 1)  # many ties
    labels = rng.integers(1, classes + 1, n)
    copies = slice(n // 2, n // 2 + n // 8)
    boxes[copies] = boxes[: n // 8]  # the same boxes ...
    labels[copies] = labels[: n // 8] % classes + 1  # ... in another class: the offset must keep them
    scores[copies] = scores[: n // 8]
    exact = np.array([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.25], [0, 0, 0.5, 0.25]])  # IoU 0.5, and identical
    return (np.concatenate([boxes, exact]), np.concatenate([scores, [0.9, 0.8, 0.8]]),
            np.concatenate([labels, [1, 1, 2]]))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("threshold", [0.3, 0.45, 0.5])
def test_batched_nms_equals_per_class_greedy_nms(seed, threshold):
    rng = np.random.default_rng(seed)
    boxes, scores, labels = _random_case(rng, 300, 4)
    want = _loop_nms(boxes.tolist(), scores.tolist(), labels.tolist(), threshold)
    for block in (1, 7, 256):  # one candidate at a time, many blocks, two blocks
        assert batched_nms(boxes, scores, labels, threshold, block=block).tolist() == want
    kept = set(want)
    n = len(boxes) - 3
    assert {n, n + 1} <= kept if threshold >= 0.5 else n + 1 not in kept  # IoU exactly 0.5 suppresses only above
    assert n + 2 in kept  # the same box in class 2 survives class 1's


def test_batched_nms_limit_and_empty():
    rng = np.random.default_rng(3)
    boxes, scores, labels = _random_case(rng, 100, 3)
    full = batched_nms(boxes, scores, labels, 0.45)
    assert batched_nms(boxes, scores, labels, 0.45, limit=5).tolist() == full[:5].tolist()
    assert batched_nms(boxes, scores, labels, 0.45, limit=5, block=3).tolist() == full[:5].tolist()
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).size == 0


def _loop_postprocess(regressions, logits, priors, config: DetectionConfig):
    boxes = [_loop_decode(r, p, config.variances) for r, p in zip(regressions, priors)]
    scores = softmax_scores(logits)
    candidates = []  # (prior, class, score)
    for c in range(1, logits.shape[1]):
        passing = [(i, scores[i, c]) for i in range(len(priors)) if scores[i, c] > config.score_threshold]
        passing.sort(key=lambda t: (-t[1], t[0]))
        candidates += [(i, c, s) for i, s in passing[:config.candidates_per_class]]
    kept = _loop_nms([boxes[i] for i, _, _ in candidates], [s for _, _, s in candidates],
                     [c for _, c, _ in candidates], config.nms_threshold)[:config.max_detections]
    return [(boxes[candidates[k][0]], candidates[k][2], candidates[k][1]) for k in kept]


def test_postprocess_equals_the_definition():
    rng = np.random.default_rng(5)
    priors = prior_boxes()[::29]
    config = DetectionConfig(score_threshold=0.05, candidates_per_class=20, max_detections=30)
    regressions = rng.normal(0, 1, (2, len(priors), 4))
    logits = np.round(rng.normal(0, 2, (2, len(priors), 6)), 1)  # rounded: equal scores
    for detection, r, l in zip(postprocess(regressions, logits, priors, config), regressions, logits):
        want = _loop_postprocess(r, l, priors, config)
        assert len(want) == len(detection.scores) > 0
        np.testing.assert_allclose(detection.boxes, [b for b, _, _ in want], rtol=0, atol=1e-12)
        np.testing.assert_allclose(detection.scores, [s for _, s, _ in want], rtol=0, atol=1e-12)
        assert detection.classes.tolist() == [c for _, _, c in want]
