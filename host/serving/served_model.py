"""One version of one model as the server holds it: its signature, its batch scheduler on the backend's executor,
request validation, the requests in flight (an unload waits for them) and Triton's statistics."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mvu.host.model.package import ModelPackage
from mvu.host.model.stages import features_stage
from mvu.host.runtime.scores import softmax, top_k
from mvu.host.serving.backend import ServingBackend
from mvu.host.serving.batching import BatchScheduler
from mvu.host.serving.errors import ServingError
from mvu.host.serving.metrics import ServingMetrics
from mvu.host.serving.statistics import ModelStatistics
from mvu.host.serving.tensors import InferenceRequest, InferenceResult, InputTensor, OutputTensor, RequestedOutput

__all__ = ["DETECTION_OUTPUTS", "FEATURES_OUTPUT", "IMAGES_INPUT", "SCORES_OUTPUT", "TENSOR_INPUT", "ServedModel",
           "ServingLimits"]

IMAGES_INPUT = "images"  # BYTES [N]: encoded JPEG/PNG; the server decodes and preprocesses
TENSOR_INPUT = "input"  # FP32 [N, 3, H, W]: already preprocessed
SCORES_OUTPUT = "scores"  # FP32 [N, classes]: softmax probabilities
FEATURES_OUTPUT = "features"  # FP32 [N, features]: the featurizer stage's output, with `mvu serve --features`
#: A detector's outputs instead of the scores, TF Serving's detection layout (FP32): boxes [N, K, 4] as (ymin, xmin,
#: ymax, xmax) normalized to the model's input, scores [N, K], class ids [N, K], how many of the K are real [N]
DETECTION_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


@dataclass
class ServingLimits:
    max_batch_size: int = 8
    max_queue_delay: float = 0.0
    max_queue_size: int = 64
    timeout: float = 60.0
    max_image_pixels: int = 40_000_000  # refused from the image's header, before it is decoded
    features: bool = False  # also serve the featurizer stage's output (FEATURES_OUTPUT) where a model has one


class ServedModel:
    """One version of one model: its signature, its batch scheduler, and request validation."""

    def __init__(self, name: str, version: str, package: ModelPackage, backend: ServingBackend,
                 limits: ServingLimits, metrics: ServingMetrics, preprocess_pool: ThreadPoolExecutor):
        from mvu.host.runtime.preprocess import PreprocessRecipe

        self.name, self.version, self.package, self.backend = name, version, package, backend
        self.recipe = PreprocessRecipe.from_dict(package.preprocessing)
        self.classes = len(package.labels)
        stage = features_stage(package.stages) if limits.features else None
        #: name -> shape of each output, in the order a request without "outputs" gets them
        self.outputs = {SCORES_OUTPUT: [-1, self.classes]} if package.detection is None else \
            _detection_signature(package.detection["max_detections"])
        if stage is not None:
            self.outputs[FEATURES_OUTPUT] = [-1, int(np.prod(package.model.shapes[stage.output][1:]))]
        self.limits, self.metrics, self._pool = limits, metrics, preprocess_pool
        self.statistics = ModelStatistics()
        self.in_flight = 0  # requests between their first step here and their answer
        self.scheduler = BatchScheduler(f"{name}@{version}", self._load_executor,
                                        max_batch_size=limits.max_batch_size, max_queue_delay=limits.max_queue_delay,
                                        max_queue_size=limits.max_queue_size, on_batch=self._on_batch)

    def _on_batch(self, images: int, cycles: int, seconds: float) -> None:
        self.metrics.observe_batch(self.name, self.version, images, cycles)
        self.statistics.batch(images, seconds)

    # Signature ----------------------------------------------------------------

    @property
    def input_shape(self) -> list[int]:
        return [-1, *self.recipe.shape[1:]]

    def metadata(self) -> dict:
        """Open Inference Protocol model metadata."""
        return {"name": self.name, "versions": [self.version], "platform": f"mvu_{self.backend.name}",
                "inputs": [{"name": IMAGES_INPUT, "datatype": "BYTES", "shape": [-1]},
                           {"name": TENSOR_INPUT, "datatype": "FP32", "shape": self.input_shape}],
                "outputs": [{"name": name, "datatype": "FP32", "shape": shape} for name, shape in self.outputs.items()]}

    @property
    def ready(self) -> bool:
        return self.scheduler.ready.is_set()

    @property
    def state(self) -> tuple[str, str]:
        """Triton's state of a loaded version and why: READY, LOADING (warming up) or UNAVAILABLE (failed)."""
        if self.scheduler.failed:
            return "UNAVAILABLE", f"failed to load: {self.scheduler.failed}"
        return ("READY", "") if self.ready else ("LOADING", "warming up")

    # Execution ----------------------------------------------------------------

    def _load_executor(self):
        """On the worker thread: the classifier (a Verilator model may take minutes the first time), with the
        programs of every sub-batch size built now rather than on a request; it runs batches to FP32 scores."""
        from mvu.host.runtime.classify import Classifier

        if self.package.detection is not None:
            return self._load_detector()
        classifier = Classifier(self.package, self.backend.name,
                                executor=self.backend.executor(self.package.config))
        classifier.runner.prepare(self.limits.max_batch_size)

        features = FEATURES_OUTPUT in self.outputs

        def run(images: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
            logits, values, stats = classifier.logits_and_features(images, features=features)
            outputs = {SCORES_OUTPUT: softmax(logits).astype(np.float32)}
            if features:
                outputs[FEATURES_OUTPUT] = values.astype(np.float32, copy=False)
            return outputs, stats.cycles

        return run

    def _load_detector(self):
        """:meth:`_load_executor` for a detector: batches to TF Serving's detection outputs."""
        from mvu.host.runtime.detect import Detector, tf_detection_outputs

        detector = Detector(self.package, self.backend.name, executor=self.backend.executor(self.package.config))
        detector.runner.prepare(self.limits.max_batch_size)
        k = self.outputs[DETECTION_OUTPUTS[1]][1]

        def run(images: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
            detections, stats = detector.detect_tensors(images)
            return tf_detection_outputs(detections, k), stats.cycles

        return run

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Validate, preprocess, queue, run; 4xx errors name the input and the cause. In flight from the first
        step (taken before the caller's next await) to the answer."""
        self.in_flight += 1
        started = time.perf_counter()
        try:
            return await self._infer(request, started)
        except Exception:
            self.statistics.failure(time.perf_counter() - started)
            raise
        finally:
            self.in_flight -= 1

    async def _infer(self, request: InferenceRequest, started: float) -> InferenceResult:
        timeout = self._timeout(request)
        with self.scheduler.arriving() as arrival:
            images, preprocess_seconds = await self._images(request)
            outputs_wanted = self._requested_outputs(request)
            batch = await self.scheduler.submit(images, timeout, arrival)
        answered = time.perf_counter()
        outputs = [OutputTensor(wanted.name, "BYTES",
                                self._classification(batch.outputs[wanted.name], wanted.classification))
                   if wanted.classification else OutputTensor(wanted.name, "FP32", batch.outputs[wanted.name])
                   for wanted in outputs_wanted]
        timings = {"queue": batch.queue_seconds * 1e3, "preprocess": preprocess_seconds * 1e3,
                   "executor": batch.executor_seconds * 1e3, "total": (time.perf_counter() - started) * 1e3}
        self.metrics.observe_inference(self.name, self.version, timings)
        self.statistics.request(timings, time.perf_counter() - answered, len(images))
        return InferenceResult(self.name, self.version, outputs, request.id, timings,
                               cycles=batch.cycles, batch_size=batch.batch_size)

    async def score_image(self, image: bytes, top: int, timeout: float | None = None) -> dict:
        """Raw image bytes -> the top classes with names and scores."""
        if self.package.detection is not None:
            raise ServingError(400, f"model {self.name!r} is a detector; ask for its outputs "
                                    f"{', '.join(DETECTION_OUTPUTS)} with an inference (predict) request")
        if not 1 <= top <= self.classes:
            raise ServingError(400, f"top must be between 1 and {self.classes}, not {top}")
        data = np.empty(1, dtype=object)
        data[0] = image
        result = await self.infer(InferenceRequest(self.name, self.version,
                                                   [InputTensor(IMAGES_INPUT, "BYTES", (1,), data)],
                                                   [RequestedOutput(SCORES_OUTPUT)], timeout=timeout))
        return {"model_name": self.name, "model_version": self.version,
                "top": top_k(result.outputs[0].data[0], self.package.labels, top),
                "cycles": result.cycles // result.batch_size,
                "modelled_ms": self.package.config.modelled_ms(result.cycles / result.batch_size),
                "timings_ms": result.timings_ms}

    # Validation ---------------------------------------------------------------

    def _timeout(self, request: InferenceRequest) -> float:
        """The request's time (a client's deadline, Triton's parameter), which can only shorten the server's."""
        if request.timeout is None:
            return self.limits.timeout
        if request.timeout <= 0:
            raise ServingError(504, "the client's deadline passed before the request could run")
        return min(request.timeout, self.limits.timeout)

    async def _images(self, request: InferenceRequest) -> tuple[np.ndarray, float]:
        if len(request.inputs) != 1:
            names = [t.name for t in request.inputs]
            raise ServingError(400, f"model {self.name!r} takes exactly one input, '{IMAGES_INPUT}' (BYTES) or "
                                    f"'{TENSOR_INPUT}' (FP32), got {len(names)}: {names}")
        tensor = request.inputs[0]
        if tensor.name == IMAGES_INPUT:
            _expect(tensor, "BYTES", "[N] encoded images")
            if tensor.data.ndim != 1 or tensor.data.size == 0:
                raise ServingError(400, f"input {IMAGES_INPUT!r}: shape must be [N] with N >= 1, "
                                        f"got {list(tensor.shape)}")
            started = time.perf_counter()
            images = await asyncio.get_running_loop().run_in_executor(self._pool, self._decode_all, tensor.data)
            return images, time.perf_counter() - started
        if tensor.name == TENSOR_INPUT:
            _expect(tensor, "FP32", str(self.input_shape).replace("-1", "N"))
            if tensor.data.ndim != 4 or tensor.data.shape[0] == 0 or list(tensor.shape[1:]) != self.input_shape[1:]:
                raise ServingError(400, f"input {TENSOR_INPUT!r}: shape must be "
                                        f"{str(self.input_shape).replace('-1', 'N')} with N >= 1, got "
                                        f"{list(tensor.shape)}")
            if not np.isfinite(tensor.data).all():
                raise ServingError(400, f"input {TENSOR_INPUT!r}: contains NaN or infinity")
            return tensor.data.astype(np.float32, copy=False), 0.0
        raise ServingError(400, f"model {self.name!r} has no input {tensor.name!r}; its inputs are "
                                f"'{IMAGES_INPUT}' (BYTES) and '{TENSOR_INPUT}' (FP32)")

    def _decode_all(self, encoded: np.ndarray) -> np.ndarray:
        from mvu.host.runtime.preprocess import ImageDecodeError, preprocess_batch

        try:  # bytes(): an element is image data, never a path to open
            return preprocess_batch((bytes(data) for data in encoded), self.recipe, name=IMAGES_INPUT,
                                    max_pixels=self.limits.max_image_pixels)
        except ImageDecodeError as error:
            raise ServingError(400, f"input {IMAGES_INPUT!r}: {error}") from None

    def _requested_outputs(self, request: InferenceRequest):
        """The outputs a request names, or all of them (the Open Inference Protocol's default)."""
        for wanted in request.outputs:
            if wanted.name not in self.outputs:
                hint = (f"; start the server with --features to serve {FEATURES_OUTPUT!r}"
                        if wanted.name == FEATURES_OUTPUT and features_stage(self.package.stages) else "")
                raise ServingError(400, f"model {self.name!r} has no output {wanted.name!r}; its outputs are "
                                        f"{', '.join(map(repr, self.outputs))}{hint}")
            if wanted.classification and wanted.name != SCORES_OUTPUT:
                raise ServingError(400, f"output {wanted.name!r}: classification applies to {SCORES_OUTPUT!r} only")
            if not 0 <= wanted.classification <= self.classes:
                raise ServingError(400, f"output {wanted.name!r}: classification must be between 0 and "
                                        f"{self.classes}, not {wanted.classification}")
        return request.outputs or [RequestedOutput(name) for name in self.outputs]

    def _classification(self, scores: np.ndarray, k: int) -> np.ndarray:
        """Triton's classification extension: "score:index:label" strings, best first."""
        out = np.empty((len(scores), k), dtype=object)
        for row, probabilities in enumerate(scores):
            out[row] = [f"{entry['score']:f}:{entry['class']}:{entry['label']}".encode()
                        for entry in top_k(probabilities, self.package.labels, k)]
        return out


def _detection_signature(k: int) -> dict[str, list[int]]:
    return dict(zip(DETECTION_OUTPUTS, ([-1, k, 4], [-1, k], [-1, k], [-1])))


def _expect(tensor, datatype: str, shape: str) -> None:
    if tensor.datatype != datatype:
        raise ServingError(400, f"input {tensor.name!r}: datatype must be {datatype} {shape}, not {tensor.datatype}")
