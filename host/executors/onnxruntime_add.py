"""Add layers of quantized tensors by onnxruntime's QLinearAdd kernel, where it computes exactly what
:func:`mvu.host.executors.kernels.qlinear_add` defines.

Both follow onnxruntime's arithmetic (two float32 fused multiply-adds,
rounding half to even); onnxruntime's kernel is vectorized and runs on all
cores. Whether it agrees with the definition on this machine is checked once,
on random operands of lengths that leave every vector tail; where it does
not, :func:`onnxruntime_add` gives ``None`` and the caller uses the compiled
kernel.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from mvu.host.executors.kernels import qlinear_add
from mvu.host.executors.onnxruntime_sessions import operator_session

__all__ = ["QLinearAdd", "add_coefficients", "onnxruntime_add"]


class QLinearAdd:
    """``a + b`` of uint8 tensors with the quantizations ``(scale, zero point)`` given, into ``out``'s."""

    def __init__(self, a: tuple[float, int], b: tuple[float, int], out: tuple[float, int]):
        from onnx import TensorProto

        constants = {}
        for name, (scale, zero_point) in zip("abc", (a, b, out)):
            if not 0 <= zero_point <= 255:
                raise ValueError(f"zero point {zero_point} of {name} is outside 0..255")
            constants[f"{name}_scale"], constants[f"{name}_zero_point"] = np.float32(scale), np.uint8(zero_point)
        flat = (TensorProto.UINT8, [None])
        self.session = operator_session(
            "QLinearAdd", ["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "c_scale", "c_zero_point"],
            {"a": flat, "b": flat}, {"c": flat}, constants, domain="com.microsoft")

    def __call__(self, a: np.ndarray, b: np.ndarray, low: int = 0, high: int = 255) -> np.ndarray | None:
        """The sum clamped to ``low .. high``, in ``a``'s memory layout; ``None`` unless ``a`` and ``b`` are
        uint8 tensors of one shape and layout."""
        if a.shape != b.shape or a.strides != b.strides or a.dtype != np.uint8 or b.dtype != np.uint8:
            return None
        out = np.empty_like(a)  # contiguous in a's axis order, so its flat view below is itself
        flat = [np.ravel(x, order="K") for x in (a, b, out)]
        binding = self.session.io_binding()
        for name, values in zip("ab", flat):
            values = np.ascontiguousarray(values)
            binding.bind_input(name, "cpu", 0, np.uint8, values.shape, values.ctypes.data)
        binding.bind_output("c", "cpu", 0, np.uint8, flat[2].shape, flat[2].ctypes.data)
        self.session.run_with_iobinding(binding)
        if (low, high) != (0, 255):
            np.clip(out, low, high, out=out)
        return out


def add_coefficients(inputs: list[tuple[float, int]], out: tuple[float, int]) -> tuple[list[np.float32], np.float32]:
    """``(ratios, start)`` of a quantized sum of ``inputs`` ((scale, zero point) pairs) into ``out``'s
    quantization, derived in float32 as onnxruntime derives them: the sum is ``start + sum(ratio * q)``,
    the arguments :func:`mvu.host.executors.kernels.qlinear_add` takes after its operands."""
    ratios = [np.float32(scale) / np.float32(out[0]) for scale, _ in inputs]
    offset = np.float32(0)
    for ratio, (_, zero_point) in zip(ratios, inputs):
        offset = np.float32(offset + np.float32(ratio * np.float32(zero_point)))
    return ratios, np.float32(out[1]) - offset


@cache
def _agrees() -> bool:
    rng = np.random.default_rng(2)
    for length in (1, 15, 17, 63, 1000, 4099):
        quantizations = [(float(rng.uniform(1e-3, 0.2)), int(rng.integers(0, 256))) for _ in range(3)]
        try:
            add = QLinearAdd(*quantizations)
        except Exception:  # noqa: BLE001 - an onnxruntime without the contrib op: not usable here
            return False
        a, b = (rng.integers(0, 256, length, dtype=np.uint8) for _ in range(2))
        ratios, start = add_coefficients(quantizations[:2], quantizations[2])
        if not np.array_equal(add(a, b), qlinear_add(a, b, *ratios, start, 0, 255)):
            return False
    return True


def onnxruntime_add(a: tuple[float, int], b: tuple[float, int], out: tuple[float, int]) -> QLinearAdd | None:
    """A :class:`QLinearAdd` for these ``(scale, zero point)`` pairs, or ``None`` where onnxruntime's kernel
    does not compute :func:`mvu.host.executors.kernels.qlinear_add`'s results on this machine."""
    if not all(0 <= zero_point <= 255 for _, zero_point in (a, b, out)) or not _agrees():
        return None
    return QLinearAdd(a, b, out)
