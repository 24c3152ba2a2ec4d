"""Image bytes to top-k classes: preprocessing, the quantized featurizer and classifier, top-k with names."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .config import HardwareConfig
from .package import ModelPackage
from .runtime import ModelRunner

__all__ = ["Prediction", "Classifier", "top_k"]


@dataclass
class Prediction:
    source: str
    top: list[dict]
    cycles: int
    modelled_ms: float
    seconds: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"source": self.source, "top": self.top, "cycles": self.cycles, "modelled_ms": self.modelled_ms,
                "seconds": self.seconds}


def top_k(logits: np.ndarray, labels: list[str], k: int) -> list[dict]:
    logits = np.asarray(logits, np.float64).reshape(-1)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-logits, kind="stable")[:k]
    return [{"class": int(i), "label": labels[i] if i < len(labels) else str(i),
             "score": float(probabilities[i])} for i in order]


class Classifier:
    """Classifies images with a model package on one backend ("numpy", "reference" or "verilator")."""

    def __init__(self, package: ModelPackage, backend: str = "reference", config: HardwareConfig | None = None,
                 executor=None):
        from .preprocess import PreprocessRecipe

        self.package = package
        self.config = config or package.config
        self.recipe = PreprocessRecipe.from_dict(package.preprocessing)
        self.runner = ModelRunner(package.model, self.config, backend, executor)

    def classify(self, source, *, top: int = 5, name: str | None = None) -> Prediction:
        """``source``: a path or the bytes of an image."""
        from .preprocess import preprocess

        started = time.perf_counter()
        image = preprocess(source, self.recipe)
        prepared = time.perf_counter()
        logits = self.runner.run(self.package.model.input_q.quantize(image))
        done = time.perf_counter()
        cycles = sum(s.cycles for s in self.runner.stats)
        accelerator = sum(s.seconds for s in self.runner.stats if s.placement == "accelerator")
        return Prediction(
            source=name or (str(source) if not isinstance(source, (bytes, bytearray)) else "<bytes>"),
            top=top_k(logits, self.package.labels, top), cycles=cycles,
            modelled_ms=cycles / (self.config.clock_mhz * 1e3),
            seconds={"preprocess": prepared - started, "accelerator": accelerator,
                     "host": done - prepared - accelerator, "total": done - started},
            layers=list(self.runner.stats))
