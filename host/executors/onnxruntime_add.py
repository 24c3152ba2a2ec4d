"""Add layers of quantized tensors by onnxruntime's QLinearAdd kernel, where it computes exactly what
:func:`mvu.host.executors.kernels.qlinear_add` defines.

Both follow onnxruntime's arithmetic (two float32 fused multiply-adds,
rounding half to even); onnxruntime's kernel is vectorized and runs on all
cores. The one constant of that arithmetic, ``start = zc - offset``, is
derived as the kernel derives it: its ``ratio_a * za + ratio_b * zb`` is
compiled with or without a fused multiply-add (x86-64's AVX2 kernel:
``fma(ratio_a, za, float32(ratio_b * zb))``), which moves ``start`` by one
float32 unit and some sums across a rounding boundary. Which derivation the
kernel follows on this machine is found once, on all 65,536 byte pairs of
random quantizations that tell the derivations apart, and on lengths that
leave every vector tail; where it follows none, :func:`onnxruntime_add`
gives ``None`` and the caller uses the compiled kernel with the plain
derivation. (A one-element tensor takes the kernel's broadcast path, which
rounds otherwise; the kernel is used as it is there.)
"""

from __future__ import annotations

from fractions import Fraction
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


def _float32(value: Fraction) -> np.float32:
    """``value`` rounded once to float32, half to even."""
    near = np.float32(float(value))
    candidates = [np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - value), int(c.view(np.uint32)) & 1))


def _products_rounded(ratios: list[np.float32], zero_points: list[int]) -> np.float32:
    """``ratio * zero_point`` per input rounded to float32, summed in order (each sum rounded)."""
    offset = np.float32(0)
    for ratio, zero_point in zip(ratios, zero_points):
        offset = np.float32(offset + np.float32(ratio * np.float32(zero_point)))
    return offset


def _fused_multiply_add(ratios: list[np.float32], zero_points: list[int]) -> np.float32:
    """Two inputs: ``fma(ratio_a, za, float32(ratio_b * zb))``, rounded once (a compiler's contraction of
    ``ratio_a * za + ratio_b * zb``); more inputs as :func:`_products_rounded`."""
    if len(ratios) != 2:
        return _products_rounded(ratios, zero_points)
    (ratio_a, ratio_b), (zero_a, zero_b) = ratios, zero_points
    return _float32(Fraction(float(ratio_a)) * zero_a + Fraction(float(np.float32(ratio_b * np.float32(zero_b)))))


#: The derivations of ``offset`` the kernel may follow, the plain one first (taken where onnxruntime is not).
_OFFSETS = {"products rounded": _products_rounded, "fused multiply-add": _fused_multiply_add}


def _coefficients(inputs: list[tuple[float, int]], out: tuple[float, int],
                  offset: str) -> tuple[list[np.float32], np.float32]:
    ratios = [np.float32(scale) / np.float32(out[0]) for scale, _ in inputs]
    return ratios, np.float32(out[1]) - _OFFSETS[offset](ratios, [zero_point for _, zero_point in inputs])


def add_coefficients(inputs: list[tuple[float, int]], out: tuple[float, int]) -> tuple[list[np.float32], np.float32]:
    """``(ratios, start)`` of a quantized sum of ``inputs`` ((scale, zero point) pairs) into ``out``'s
    quantization, derived in float32 as onnxruntime's kernel derives them on this machine: the sum is
    ``start + sum(ratio * q)``, the arguments :func:`mvu.host.executors.kernels.qlinear_add` takes after its
    operands."""
    return _coefficients(inputs, out, _offset_rule() or next(iter(_OFFSETS)))


def _random_quantizations(rng: np.random.Generator) -> list[tuple[float, int]]:
    return [(float(rng.uniform(1e-3, 0.2)), int(rng.integers(0, 256))) for _ in range(3)]


def _defined(quantizations: list, a: np.ndarray, b: np.ndarray, offset: str) -> np.ndarray:
    """The definition's sums of ``a`` and ``b`` with ``start`` derived by ``offset``."""
    (ratio_a, ratio_b), start = _coefficients(quantizations[:2], quantizations[2], offset)
    return qlinear_add(a, b, ratio_a, ratio_b, start, 0, 255)


def _follows(quantizations: list, a: np.ndarray, b: np.ndarray, offsets) -> set[str]:
    """The derivations in ``offsets`` whose definition gives onnxruntime's sums of ``a`` and ``b``."""
    try:
        got = QLinearAdd(*quantizations)(a, b)
    except Exception:  # noqa: BLE001 - an onnxruntime without the contrib op: not usable here
        return set()
    return {name for name in offsets if np.array_equal(got, _defined(quantizations, a, b, name))}


@cache
def _offset_rule() -> str | None:
    """The derivation of ``offset`` in :data:`_OFFSETS` onnxruntime's kernel follows here, or ``None``."""
    rng = np.random.default_rng(2)
    offsets = set(_OFFSETS)
    for length in (15, 17, 63, 1000, 4099):
        a, b = (rng.integers(0, 256, length, dtype=np.uint8) for _ in range(2))
        offsets &= _follows(_random_quantizations(rng), a, b, offsets)
    first, second = (codes.ravel() for codes in np.meshgrid(np.arange(256, dtype=np.uint8),
                                                             np.arange(256, dtype=np.uint8), indexing="ij"))
    told_apart = 0
    for _ in range(200):
        if not offsets or len(offsets) == 1 and told_apart >= 3:
            break
        quantizations = _random_quantizations(rng)
        sums = {_defined(quantizations, first, second, name).tobytes() for name in _OFFSETS}
        if len(sums) > 1:  # these quantizations tell the derivations apart
            told_apart += 1
            offsets &= _follows(quantizations, first, second, offsets)
    return next((name for name in _OFFSETS if name in offsets), None)


def onnxruntime_add(a: tuple[float, int], b: tuple[float, int], out: tuple[float, int]) -> QLinearAdd | None:
    """A :class:`QLinearAdd` for these ``(scale, zero point)`` pairs, or ``None`` where onnxruntime's kernel
    does not compute :func:`mvu.host.executors.kernels.qlinear_add`'s results on this machine."""
    if not all(0 <= zero_point <= 255 for _, zero_point in (a, b, out)) or _offset_rule() is None:
        return None
    return QLinearAdd(a, b, out)
