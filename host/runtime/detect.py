"""Images to detections with a detector package: preprocessing, the quantized network, SSD's post-processing.

The network runs like a classifier's (:class:`~mvu.host.runtime.runner.ModelRunner`, power-of-two sub-batches);
the two head tensors the package names (``detection.boxes`` and ``detection.scores``) are read back, each in its
own quantization, dequantized, and post-processed on the host (:mod:`mvu.host.runtime.detection`). Boxes are
normalized to the model's input, the centre square the preprocessing cuts; :func:`to_image_pixels` maps them back
onto the original image.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mvu.hdl.contract.config import HardwareConfig
from mvu.host.model.package import ModelPackage
from mvu.host.runtime.classify import BatchStats
from mvu.host.runtime.detection import Detection, DetectionConfig, postprocess, prior_boxes
from mvu.host.runtime.runner import ModelRunner

__all__ = ["DetectionPackageError", "Detector", "ImageDetections", "tf_detection_outputs", "to_image_pixels"]


class DetectionPackageError(ValueError):
    """A package that cannot detect: a classifier, or a detector whose head tensors are missing."""


@dataclass
class ImageDetections:
    """One image's detections with label names; ``size`` is the original image's (width, height)."""

    source: str
    detection: Detection
    labels: list[str]
    size: tuple[int, int]

    def to_dict(self, recipe) -> dict:
        """Boxes in the original image's pixels (x1, y1, x2, y2), best first."""
        pixels = to_image_pixels(self.detection.boxes, self.size, recipe)
        return {"source": self.source, "detections": [
            {"label": self.labels[c], "class": int(c), "score": float(s), "box": [round(float(v), 1) for v in box]}
            for box, s, c in zip(pixels, self.detection.scores, self.detection.classes)]}


def to_image_pixels(boxes: np.ndarray, size: tuple[int, int], recipe) -> np.ndarray:
    """Boxes (x1, y1, x2, y2) normalized to the model's input -> pixels of the original ``size`` (width, height)
    image: undo the centre crop and the resize of :mod:`~mvu.host.runtime.preprocess`."""
    from mvu.host.runtime.preprocess import _crop_offsets, _resized_size

    width, height = size
    new_w, new_h = _resized_size(width, height, recipe.resize)
    top, left = _crop_offsets(new_w, new_h, recipe.crop)
    resized = np.asarray(boxes, np.float64) * recipe.crop + np.array([left, top, left, top])
    return resized * np.array([width / new_w, height / new_h] * 2)


def tf_detection_outputs(detections: Sequence[Detection], k: int) -> dict[str, np.ndarray]:
    """TF Serving's detection layout, padded with zeros to ``k`` detections: ``detection_boxes`` [N, k, 4] as
    (ymin, xmin, ymax, xmax), ``detection_scores`` [N, k], ``detection_classes`` [N, k] (float class ids),
    ``num_detections`` [N] (float), all float32."""
    n = len(detections)
    boxes, scores, classes = np.zeros((n, k, 4), np.float32), np.zeros((n, k), np.float32), np.zeros((n, k),
                                                                                                     np.float32)
    counts = np.zeros(n, np.float32)
    for i, d in enumerate(detections):
        m = min(k, len(d.scores))
        boxes[i, :m] = d.boxes[:m][:, [1, 0, 3, 2]]
        scores[i, :m], classes[i, :m], counts[i] = d.scores[:m], d.classes[:m], m
    return {"detection_boxes": boxes, "detection_scores": scores, "detection_classes": classes,
            "num_detections": counts}


class Detector:
    """Detects objects with a detector package on one of :data:`~mvu.host.executors.BACKENDS`."""

    def __init__(self, package: ModelPackage, backend: str = "reference", config: HardwareConfig | None = None,
                 executor=None):
        from mvu.host.runtime.preprocess import PreprocessRecipe

        if package.detection is None:
            raise DetectionPackageError(f"model {package.name!r} is a classifier, not a detector (its package has "
                                        f"no detection entry)")
        self.heads = (package.detection.get("boxes"), package.detection.get("scores"))
        missing = [name for name in self.heads if name not in package.model.tensor_q]
        if missing:
            raise DetectionPackageError(f"model {package.name!r}: its detection heads {missing} are not tensors of "
                                        f"the network; a detector needs box regressions and class logits")
        self.package = package
        self.config = config or package.config
        self.settings = DetectionConfig.from_dict(package.detection)
        self.priors = prior_boxes(self.settings.priors)
        self.recipe = PreprocessRecipe.from_dict(package.preprocessing)
        self.runner = ModelRunner(package.model, self.config, backend, executor)

    def heads_output(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, BatchStats]:
        """Preprocessed float32 images [N, 3, H, W] -> regressions [N, P, 4] and logits [N, P, classes] (float32,
        dequantized) and the batch's cost."""
        started = time.perf_counter()
        with np.errstate(over="ignore"):
            images_q = self.package.model.input_q.quantize(np.asarray(images, np.float32))
        self.runner.run_sub_batches(images_q, keep=list(self.heads))
        regressions, logits = (self.package.model.tensor_q[name].dequantize(self.runner.kept[name])
                               for name in self.heads)
        total = time.perf_counter() - started
        stats = self.runner.stats
        cycles = sum(s.cycles for s in stats)
        accelerator = sum(s.seconds for s in stats if s.placement == "accelerator")
        return regressions, logits, BatchStats(images=len(images_q), cycles=cycles,
                                               modelled_ms=self.config.modelled_ms(cycles),
                                               seconds={"accelerator": accelerator, "host": total - accelerator,
                                                        "total": total}, layers=list(stats))

    def detect_tensors(self, images: np.ndarray) -> tuple[list[Detection], BatchStats]:
        """Preprocessed images -> each image's detections, and the batch's cost."""
        regressions, logits, stats = self.heads_output(images)
        return postprocess(regressions, logits, self.priors, self.settings), stats

    def detect(self, sources: Sequence, names: Sequence[str] | None = None) -> list[ImageDetections]:
        """Image files or bytes, run as one batch -> their detections, with labels and the images' sizes."""
        from mvu.host.runtime.preprocess import decode_image, preprocess_batch

        sources = list(sources)
        names = list(names) if names is not None else [
            "<bytes>" if isinstance(s, (bytes, bytearray, memoryview)) else str(s) for s in sources]
        images = [decode_image(source, name) for source, name in zip(sources, names)]
        detections, _ = self.detect_tensors(preprocess_batch(images, self.recipe))
        return [ImageDetections(name, detection, self.package.labels, image.size)
                for name, detection, image in zip(names, detections, images)]
