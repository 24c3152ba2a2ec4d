"""Prometheus metrics of one server: requests, failures, latency by phase, images, batches, cycles."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServingMetrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120)


class ServingMetrics:
    """Counters and histograms in a registry of their own (several servers may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mvu_requests", "Requests answered, by protocol, endpoint kind and status.",
                                ["protocol", "endpoint", "status"], registry=self.registry)
        self.failures = Counter("mvu_request_failures", "Requests answered with an error, by model and status.",
                                ["model", "status"], registry=self.registry)
        self.latency = Histogram("mvu_inference_seconds", "Inference latency split into phases: queue, "
                                 "preprocess, executor (the accelerator and host layers), total.",
                                 ["model", "version", "phase"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.images = Counter("mvu_images", "Images inferred.", ["model", "version"], registry=self.registry)
        self.batch_size = Histogram("mvu_batch_size", "Images per executor batch.", ["model", "version"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.cycles = Counter("mvu_accelerator_cycles", "Accelerator clock cycles spent (batches counted once).",
                              ["model", "version"], registry=self.registry)
        self.queued = Gauge("mvu_queued_images", "Images waiting for the executor.", ["model", "version"],
                            registry=self.registry)

    def observe_inference(self, model: str, version: str, timings_ms: dict[str, float]) -> None:
        for phase, value in timings_ms.items():
            self.latency.labels(model, version, phase).observe(value / 1000)

    def observe_batch(self, model: str, version: str, images: int, cycles: int) -> None:
        self.images.labels(model, version).inc(images)
        self.batch_size.labels(model, version).observe(images)
        self.cycles.labels(model, version).inc(cycles)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
