"""Matrix products with float32 requantization fused in, for execution plans: onnxruntime's QLinearConv.

A product ``(x - zero point) @ w`` whose sums a float32-scale STORE writes out
(``rint(float32(sum + bias) * scale) + zero point``, clamped: docs/isa.md) is
exactly a 1x1 channels-last QLinearConv with input and output scales of 1 and
the STORE's scales as per-channel weight scales. onnxruntime packs a constant
weight matrix once and requantizes inside its kernel, which saves a pass over
the int32 sums and the packing on every run.

The packed weights are a copy: execution plans compare them and the
parameters with the memory's before every run (:meth:`FusedProduct.same_weights`),
the weights only on the run that packs them where the program's owner vouches
that they stay (:data:`~mvu.host.executors.FIXED_WEIGHTS`). Whether the kernels
are exact on this machine (no saturated 16-bit intermediate sums, rounding
half to even, clamping before conversion) is checked once per operand
signedness against :func:`mvu.hdl.contract.requantization.requantize`; :func:`fused_product`
gives ``None`` where they are not.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from mvu.hdl.contract.requantization import float32_scales, float32_significand, requantize
from mvu.host.executors.kernels import same_bytes
from mvu.host.executors.onnxruntime_sessions import operator_session

__all__ = ["FusedProduct", "fused_product"]

_INPUT, _OUTPUT = "x", "y"


def _session(w: np.ndarray, bias: np.ndarray, scale: np.ndarray, act_signed: bool, act_zero_point: int,
             out_signed: bool, out_zero_point: int):
    from onnx import TensorProto

    k, n = w.shape
    act_type, out_type = (np.int8 if signed else np.uint8 for signed in (act_signed, out_signed))
    constants = {"x_scale": np.float32(1), "x_zero_point": act_type(act_zero_point),
                 "w": np.ascontiguousarray(w.T).reshape(n, k, 1, 1), "w_scale": scale.astype(np.float32),
                 "w_zero_point": np.zeros(n, np.int8), "y_scale": np.float32(1),
                 "y_zero_point": out_type(out_zero_point), "bias": bias.astype(np.int32)}
    element = {np.int8: TensorProto.INT8, np.uint8: TensorProto.UINT8}
    return operator_session("QLinearConv", [_INPUT, *constants], {_INPUT: (element[act_type], [1, None, 1, k])},
                            {_OUTPUT: (element[out_type], [1, None, 1, n])}, constants, domain="com.microsoft",
                            channels_last=1)


class FusedProduct:
    """``requantize((x - act_zero_point) @ w)`` for one weight matrix, packed once, with the float32-scale
    parameters ``bias``, ``multiplier`` and ``shift`` (int32 [3, N], as parameter blocks hold them).

    ``w`` is int8 [K, N]. The output is int8 when ``clamp_min < 0``, else
    uint8, with ``out_zero_point`` inside that type's range.
    """

    def __init__(self, w: np.ndarray, parameters: np.ndarray, *, act_signed: bool, act_zero_point: int,
                 out_zero_point: int, clamp_min: int, clamp_max: int):
        self.out_signed = clamp_min < 0
        low, high = (-128, 127) if self.out_signed else (0, 255)
        if not low <= out_zero_point <= high or not low <= clamp_min <= clamp_max <= high:
            raise ValueError(f"zero point {out_zero_point} and clamp range {clamp_min}..{clamp_max} must lie "
                             f"within {low}..{high}")
        self.w, self.parameters = np.array(w, np.int8), np.array(parameters, np.int32)
        if self.parameters.shape != (3, self.w.shape[1]):
            raise ValueError(f"expected parameters of shape (3, {self.w.shape[1]}), got {self.parameters.shape}")
        bias, multiplier, shift = self.parameters
        self.clamp = None if (clamp_min, clamp_max) == (low, high) else (clamp_min, clamp_max)
        self.session = _session(self.w, bias, float32_scales(multiplier, shift & 63), act_signed, act_zero_point,
                                self.out_signed, out_zero_point)
        self._act_type = np.int8 if act_signed else np.uint8
        self._out_type = np.int8 if self.out_signed else np.uint8
        self._bound: tuple | None = None  # the last binding's (addresses and shapes, binding)

    def matches(self, w: np.ndarray, parameters: np.ndarray) -> bool:
        """Whether ``w`` and ``parameters`` are still the ones packed (a full comparison)."""
        return same_bytes(parameters.view(np.uint8), self.parameters.view(np.uint8)) and self.same_weights(w)

    def same_weights(self, w: np.ndarray) -> bool:
        """Whether ``w`` is still the weight matrix packed (a full comparison)."""
        return same_bytes(w.view(np.uint8), self.w.view(np.uint8))

    def _binding(self, x: np.ndarray, y: np.ndarray):
        """The session's binding of ``x`` and ``y`` (contiguous): the last one made where it names the same
        addresses and shapes (a plan's operands stay in place from run to run), else a new one."""
        key = (x.ctypes.data, x.shape, y.ctypes.data, y.shape)
        if self._bound is None or self._bound[0] != key:
            binding = self.session.io_binding()
            binding.bind_input(_INPUT, "cpu", 0, self._act_type, (1, x.shape[0], 1, x.shape[1]), x.ctypes.data)
            binding.bind_output(_OUTPUT, "cpu", 0, self._out_type, (1, y.shape[0], 1, y.shape[1]), y.ctypes.data)
            self._bound = (key, binding)
        return self._bound[1]

    def run(self, x: np.ndarray, out: np.ndarray) -> None:
        """Write the requantized ``x`` [M, K] (int8 or uint8 as set up; its bytes may be uint8) to ``out``
        [M, N] (bytes, any row stride)."""
        x = np.ascontiguousarray(x).view(self._act_type)
        rows, columns = len(x), self.w.shape[1]
        contiguous = out.flags.c_contiguous
        y = out.view(self._out_type) if contiguous else np.empty((rows, columns), self._out_type)
        self.session.run_with_iobinding(self._binding(x, y))
        if self.clamp is not None:
            np.clip(y, *self.clamp, out=y)
        if not contiguous:
            out[...] = y.view(np.uint8)


def _extreme_case(rng: np.random.Generator, act_signed: bool):
    """Operands that saturate 16-bit partial sums, sums that land on ties, and scales that overflow the
    output: what an inexact kernel would get wrong."""
    k, n = 300, 16
    low, high = (-128, 127) if act_signed else (0, 255)
    x = rng.integers(low, high + 1, (24, k))
    x[:8], x[8:16] = high, low
    w = rng.integers(-128, 128, (k, n))
    w[:, :4], w[:, 4:8] = 127, -128
    scale = rng.uniform(1e-4, 1e-2, n).astype(np.float32)
    scale[8:11] = [0.5, 0.25, 1.5]  # odd sums times these end in .5 (or .25, .75 for the bias to move)
    scale[11], scale[12] = np.float32(3e4), np.float32(2.0 ** -40)
    bias = rng.integers(-(1 << 12), 1 << 12, n)
    zero_point = int(rng.integers(low, high + 1))
    return x.astype(np.int8 if act_signed else np.uint8), zero_point, w.astype(np.int8), bias, scale


@cache
def _exact(act_signed: bool, out_signed: bool) -> bool:
    rng = np.random.default_rng(1)
    x, zero_point, w, bias, scale = _extreme_case(rng, act_signed)
    multiplier, shift = np.array([float32_significand(s) for s in scale]).T
    parameters = np.stack([bias, multiplier, shift])
    limits = [(-128, 127), (-20, 90)] if out_signed else [(0, 255), (3, 200)]
    for (low, high), out_zero_point in zip(limits, (-3, 5) if out_signed else (0, 131)):
        try:
            product = FusedProduct(w, parameters, act_signed=act_signed, act_zero_point=zero_point,
                                   out_zero_point=out_zero_point, clamp_min=low, clamp_max=high)
        except Exception:  # noqa: BLE001 - onnxruntime has no kernel for these types: not usable here
            return False
        got = np.empty((len(x), w.shape[1]), np.uint8)
        product.run(x, got)
        sums = (x.astype(np.int64) - zero_point) @ w.astype(np.int64)
        expected = requantize(sums.astype(np.int32), bias, multiplier, shift, out_zero_point, low, high,
                              float32_scale=True)
        if not np.array_equal(got, expected):
            return False
    return True


def _within(value: int, signed: bool) -> bool:
    return -128 <= value <= 127 if signed else 0 <= value <= 255


def fused_product(w: np.ndarray, parameters: np.ndarray, *, act_signed: bool, act_zero_point: int,
                  out_zero_point: int, clamp_min: int, clamp_max: int) -> FusedProduct | None:
    """A :class:`FusedProduct`, or ``None`` when onnxruntime cannot compute it exactly here."""
    out_signed = clamp_min < 0
    if not (_within(act_zero_point, act_signed) and _within(out_zero_point, out_signed)
            and _exact(bool(act_signed), out_signed)):
        return None
    return FusedProduct(w, parameters, act_signed=bool(act_signed), act_zero_point=act_zero_point,
                        out_zero_point=out_zero_point, clamp_min=clamp_min, clamp_max=clamp_max)
