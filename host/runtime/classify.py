"""Image bytes to top-k classes: preprocessing, the quantized featurizer and classifier, top-k with names.

Images can be classified one at a time (:meth:`Classifier.classify`) or as a batch
(:meth:`Classifier.classify_batch`, :meth:`Classifier.logits`): a batch runs every accelerator
layer as one matrix product over all its images, which loads each layer's weights once per batch,
in power-of-two sub-batches (:meth:`ModelRunner.run_sub_batches`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mvu.hdl.contract.config import HardwareConfig
from mvu.host.model.package import ModelPackage
from mvu.host.model.stages import features_stage
from mvu.host.runtime.runner import LayerStats, ModelRunner
from mvu.host.runtime.scores import softmax, top_k

__all__ = ["BatchStats", "Prediction", "Classifier"]


@dataclass
class Prediction:
    """One image's top classes. ``cycles``, ``modelled_ms`` and ``seconds`` are this image's share of its
    batch (the batch's totals divided by ``batch_size``); ``layers`` are the whole batch's layer stats."""

    source: str
    top: list[dict]
    cycles: int
    modelled_ms: float
    seconds: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)
    batch_size: int = 1

    def to_dict(self) -> dict:
        return {"source": self.source, "top": self.top, "cycles": self.cycles, "modelled_ms": self.modelled_ms,
                "seconds": self.seconds, "batch_size": self.batch_size}


@dataclass
class BatchStats:
    """What running one batch through the model cost, in total for all its ``images``.

    ``seconds`` has "accelerator" (layers placed on the accelerator), "host" (the rest) and "total".
    """

    images: int
    cycles: int
    modelled_ms: float
    seconds: dict
    layers: list[LayerStats]


def _source_name(source) -> str:
    return "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)


class Classifier:
    """Classifies images with a model package on one of :data:`~mvu.host.executors.BACKENDS`: with ``network``, each
    batch size's layers linked into one program where they link (the device runs the network alone: the host writes
    the input and reads the results), else one program per layer (each layer's own cycles, as ``mvu profile``
    shows them)."""

    def __init__(self, package: ModelPackage, backend: str = "reference", config: HardwareConfig | None = None,
                 executor=None, *, network: bool = True):
        from mvu.host.runtime.preprocess import PreprocessRecipe

        self.package = package
        self.config = config or package.config
        self.recipe = PreprocessRecipe.from_dict(package.preprocessing)
        self.runner = ModelRunner(package.model, self.config, backend, executor, network=network)

    def logits(self, images: np.ndarray) -> tuple[np.ndarray, BatchStats]:
        """Preprocessed float32 images [N, 3, crop, crop] -> float logits [N, classes] and the batch's cost.

        Values beyond the input's quantized range saturate (silently: a huge finite input is no error)."""
        logits, _, stats = self.logits_and_features(images, features=False)
        return logits, stats

    @property
    def features_tensor(self) -> str | None:
        """The featurizer stage's output, or None for a package without one."""
        stage = features_stage(self.package.stages)
        return stage.output if stage else None

    def logits_and_features(self, images: np.ndarray, *, features: bool = True
                            ) -> tuple[np.ndarray, np.ndarray | None, BatchStats]:
        """:meth:`logits`, and with ``features`` the featurizer stage's output [N, features] as float32 (its
        codes dequantized), from the same run."""
        cut = self.features_tensor if features else None
        if features and cut is None:
            raise ValueError(f"model {self.package.name!r} has no featurizer stage")
        started = time.perf_counter()
        with np.errstate(over="ignore"):
            images_q = self.package.model.input_q.quantize(np.asarray(images, np.float32))
        logits = self.runner.run_sub_batches(images_q, keep=[cut] if cut else [])
        values = None
        if cut:
            codes = self.runner.kept[cut].reshape(len(images_q), -1)
            values = self.package.model.tensor_q[cut].dequantize(codes)
        total = time.perf_counter() - started
        stats = self.runner.stats
        cycles = sum(s.cycles for s in stats)
        accelerator = sum(s.seconds for s in stats if s.placement == "accelerator")
        return logits, values, BatchStats(images=len(logits), cycles=cycles,
                                          modelled_ms=self.config.modelled_ms(cycles),
                                          seconds={"accelerator": accelerator, "host": total - accelerator,
                                                   "total": total},
                                          layers=list(stats))

    def classify_batch(self, sources: Sequence, *, top: int = 5,
                       names: Sequence[str | None] | None = None) -> list[Prediction]:
        """``sources``: paths or bytes of images, run as one batch; one :class:`Prediction` each, in order.

        ``names`` (optional, one per source) replace the sources' names in the predictions.
        """
        from mvu.host.runtime.preprocess import preprocess_batch

        sources = list(sources)
        names = list(names) if names is not None else [None] * len(sources)
        if len(names) != len(sources):
            raise ValueError(f"{len(names)} names for {len(sources)} images")
        if not sources:
            return []
        started = time.perf_counter()
        images = preprocess_batch(sources, self.recipe)
        prepared = time.perf_counter()
        logits, batch = self.logits(images)
        n = len(sources)
        seconds = {"preprocess": prepared - started, **batch.seconds}
        seconds["total"] += seconds["preprocess"]
        share = {key: value / n for key, value in seconds.items()}
        return [Prediction(source=name or _source_name(source), top=top_k(row, self.package.labels, top),
                           cycles=round(batch.cycles / n), modelled_ms=batch.modelled_ms / n, seconds=dict(share),
                           layers=batch.layers, batch_size=n)
                for source, name, row in zip(sources, names, softmax(logits))]

    def classify(self, source, *, top: int = 5, name: str | None = None) -> Prediction:
        """``source``: a path or the bytes of an image."""
        return self.classify_batch([source], top=top, names=[name])[0]
