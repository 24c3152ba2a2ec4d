"""A toy ImageNet-shaped classifier with seeded weights: 32x32 input, 1000 classes, milliseconds per image.

Its answers mean nothing; it exists so the serving stack, its tests and its
benchmarks have a model that compiles in a second and runs on every executor.
"""

from __future__ import annotations

import numpy as np
import onnx

from mvu.models.onnx_builder import GraphBuilder

__all__ = ["build_toy_classifier", "PREPROCESSING"]

#: torchvision's normalization at 32x32.
PREPROCESSING = {"resize": 36, "crop": 32, "mean": [0.485 * 255, 0.456 * 255, 0.406 * 255],
                 "std": [0.229 * 255, 0.224 * 255, 0.225 * 255]}


def build_toy_classifier(seed: int = 0, classes: int = 1000) -> onnx.ModelProto:
    """Conv-ReLU twice (stride 2), global average pool, fully connected."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder("toy", (1, 3, 32, 32))
    x = g.relu(g.conv("input", rng.normal(0, 0.3, (16, 3, 3, 3)), rng.normal(0, 0.1, 16), stride=2, padding=1))
    x = g.relu(g.conv(x, rng.normal(0, 0.15, (32, 16, 3, 3)), rng.normal(0, 0.1, 32), stride=2, padding=1))
    x = g.flatten(g.global_average_pool(x))
    return g.build(g.gemm(x, rng.normal(0, 0.3, (classes, 32)), rng.normal(0, 0.1, classes)), classes=classes)
