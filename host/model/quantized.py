"""A quantized network as the compiler hands it to the runtime: integer layers, their tensors' quantization."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["QuantParams", "Layer", "QuantizedModel"]


@dataclass(frozen=True)
class QuantParams:
    """``real = scale * (q - zero_point)``, q in 0..255."""

    scale: float
    zero_point: int

    @classmethod
    def from_range(cls, low: float, high: float) -> "QuantParams":
        low, high = min(float(low), 0.0), max(float(high), 0.0)
        if high - low < 1e-8:
            high = low + 1e-8
        scale = (high - low) / 255.0
        return cls(scale, int(np.clip(round(-low / scale), 0, 255)))

    def quantize(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.round(x / self.scale) + self.zero_point, 0, 255).astype(np.uint8)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (q.astype(np.float32) - self.zero_point) * np.float32(self.scale)


#: The placement of a layer that moves no bytes: the same memory seen in another shape (a flatten of a 1 x 1 map,
#: whose channels-last and channels-first orders coincide), or tensors side by side (a Concat done by addressing).
VIEW = "view"


def is_view(shape: tuple[int, ...]) -> bool:
    """Whether any reshape of a tensor of ``shape`` (batch first) keeps its bytes where they are in channels-last
    memory: at most one of its channel and spatial extents exceeds 1."""
    return sum(extent > 1 for extent in shape[1:]) <= 1


@dataclass
class Layer:
    """One integer operation. ``placement`` is "accelerator", "host" or :data:`VIEW`."""

    kind: str
    name: str
    inputs: list[str]
    output: str
    placement: str
    attrs: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    out_q: QuantParams | None = None
    macs: int = 0


@dataclass
class QuantizedModel:
    input: str
    input_shape: tuple[int, ...]
    input_q: QuantParams
    output: str
    layers: list[Layer]
    tensor_q: dict[str, QuantParams]
    shapes: dict[str, tuple[int, ...]]
    report: list[dict]
