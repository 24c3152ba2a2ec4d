"""Fused loops over quantized tensors, compiled by numba: one pass over memory where numpy makes several.

Each kernel computes exactly what the numpy code beside its caller computes
(tests/test_kernels.py checks them against it on random data, edge values
included); callers use the numpy code for shapes a kernel does not take.
Kernels run on the calling thread and release the GIL, so server threads
can run them side by side. Compiled code is cached beside this file (or in
numba's user cache) after the first use.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types, uint64
from numba.extending import intrinsic

__all__ = ["postprocess_rows", "float32_requantize_rows", "qlinear_add", "fused_multiply_adds", "depthwise_sums",
           "diagonal_sums", "diagonal_maxima", "gather_rows", "same_bytes"]

_JIT = dict(cache=True, nogil=True)


@intrinsic
def _fma32(typingctx, a, b, c):
    """``a * b + c`` of float32 values rounded once (LLVM's ``llvm.fma``: a fused multiply-add whatever the
    processor, its instruction where it has one)."""
    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return types.float32(types.float32, types.float32, types.float32), codegen


@njit(**_JIT)
def _postprocess(acc, bias, multiplier, shift, zero_point, low, high, out):
    rows, cols = acc.shape
    for i in range(rows):
        for j in range(cols):
            total = np.int64(np.int32(np.int64(acc[i, j]) + bias[j]))  # int32 addition wraps
            s = shift[j]
            x = total * multiplier[j] + ((np.int64(1) << (s - 1)) if s > 0 else np.int64(0))
            x = (x >> s) + zero_point
            out[i, j] = np.uint8(min(max(x, low), high) & 0xFF)


def postprocess_rows(acc: np.ndarray, bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
                     zero_point: int, low: int, high: int, out: np.ndarray | None = None) -> np.ndarray:
    """The post-processor's arithmetic on int32 ``acc`` [rows, channels] with one parameter per channel
    (:func:`mvu.hdl.contract.requantization.requantize`); returns the output bytes, in ``out`` if given."""
    out = np.empty(acc.shape, np.uint8) if out is None else out
    _postprocess(acc, bias.astype(np.int64), multiplier.astype(np.int64), shift.astype(np.int64),
                 np.int64(zero_point), np.int64(low), np.int64(high), out)
    return out


@njit(**_JIT)
def _float32_requantize(acc, bias, scale, zero_point, low, high, out):
    rows, cols = acc.shape
    for i in range(rows):
        for j in range(cols):
            total = np.float32(np.int32(np.int64(acc[i, j]) + bias[j]))  # int32 addition wraps
            y = np.rint(total * scale[j]) + zero_point
            out[i, j] = np.uint8(np.int64(min(max(y, low), high)) & 0xFF)  # int8 results in two's complement


def float32_requantize_rows(acc: np.ndarray, bias: np.ndarray, scale: np.ndarray, zero_point: int,
                            low: int, high: int, out: np.ndarray | None = None) -> np.ndarray:
    """onnxruntime's requantization of int32 ``acc`` [rows, channels]: ``float32(acc + bias) * scale``,
    rounded half to even, plus the zero point, clamped; returns the low bytes, in ``out`` if given."""
    out = np.empty(acc.shape, np.uint8) if out is None else out
    _float32_requantize(acc, bias.astype(np.int64), scale.astype(np.float32), np.float32(zero_point),
                        np.float32(low), np.float32(high), out)
    return out


@njit(**_JIT)
def _qlinear_add(a, b, ratio_a, ratio_b, start, low, high, out):
    for i in range(a.size):
        # fma(b, ratio_b, start), then fma(a, ratio_a, .): exact products in float64, rounded once to float32
        partial = np.float32(np.float64(b[i]) * ratio_b + np.float64(start))
        total = np.float32(np.float64(a[i]) * ratio_a + np.float64(partial))
        out[i] = np.uint8(min(max(np.rint(total), low), high))


def qlinear_add(a: np.ndarray, b: np.ndarray, ratio_a: np.float32, ratio_b: np.float32, start: np.float32,
                low: int, high: int) -> np.ndarray | None:
    """onnxruntime's QLinearAdd of two uint8 tensors of one shape and memory layout (see ``ModelRunner._add``);
    ``None`` when their layouts differ."""
    if a.shape != b.shape or a.strides != b.strides or a.dtype != np.uint8 or b.dtype != np.uint8:
        return None
    out = np.empty_like(a)  # contiguous in a's axis order, so its flat view below is itself
    flat = [np.ravel(x, order="K") for x in (a, b, out)]
    _qlinear_add(flat[0], flat[1], np.float64(ratio_a), np.float64(ratio_b), np.float32(start),
                 np.float32(low), np.float32(high), flat[2])
    return out


@njit(**_JIT)
def _fused_multiply_adds(codes, addend, ratio_codes, ratio_addend, start, codes_inner, low, high):
    # in place, so that the only store aliases a load at its own index and the loops vectorize
    if codes_inner:
        for i in range(codes.size):
            partial = _fma32(np.float32(codes[i]), ratio_codes, start)
            codes[i] = np.uint8(min(max(np.rint(_fma32(np.float32(addend[i]), ratio_addend, partial)), low), high))
    else:
        for i in range(codes.size):
            partial = _fma32(np.float32(addend[i]), ratio_addend, start)
            codes[i] = np.uint8(min(max(np.rint(_fma32(np.float32(codes[i]), ratio_codes, partial)), low), high))


def fused_multiply_adds(codes: np.ndarray, addend: np.ndarray, ratio_codes: np.float32, ratio_addend: np.float32,
                        start: np.float32, codes_inner: bool, low: int, high: int) -> None:
    """``codes`` (flat uint8) replaced by ``clamp(rint(fma(outer, ratio_outer, fma(inner, ratio_inner, start))),
    low, high)`` in float32, each fused multiply-add rounded once (half to even): ``inner`` is ``codes`` where
    ``codes_inner``, else ``addend`` (flat uint8 of the same length), ``outer`` the other one."""
    _fused_multiply_adds(codes, addend, np.float32(ratio_codes), np.float32(ratio_addend), np.float32(start),
                         bool(codes_inner), np.float32(low), np.float32(high))


@njit(**_JIT)
def _depthwise(image, weight, zero_point, strides, dilations, pads, out):
    height, width, channels = image.shape
    out_h, out_w, _ = out.shape
    kh, kw, _ = weight.shape
    for oy in range(out_h):
        for ox in range(out_w):
            for c in range(channels):
                out[oy, ox, c] = 0
            for i in range(kh):
                y = oy * strides[0] + i * dilations[0] - pads[0]
                if y < 0 or y >= height:
                    continue  # padding holds the zero point: it adds nothing
                for j in range(kw):
                    x = ox * strides[1] + j * dilations[1] - pads[1]
                    if x < 0 or x >= width:
                        continue
                    for c in range(channels):
                        out[oy, ox, c] += (np.int32(image[y, x, c]) - zero_point) * weight[i, j, c]


def depthwise_sums(image: np.ndarray, weight: np.ndarray, zero_point: int, strides, dilations, pads,
                   out_shape: tuple[int, int]) -> np.ndarray:
    """int32 sums of a depthwise convolution of one channels-last uint8 ``image`` [H, W, C] with ``weight``
    [kh, kw, C], padding with the zero point: [Ho, Wo, C]."""
    out = np.empty((*out_shape, image.shape[2]), np.int32)
    _depthwise(np.ascontiguousarray(image), np.ascontiguousarray(weight, dtype=np.int32), np.int32(zero_point), np.array(strides, np.int64),
               np.array(dilations, np.int64), np.array(pads[:2], np.int64), out)
    return out


@njit(**_JIT)
def _diagonal_sums(taps, zero_point, diagonals, out):
    count, rows, n = taps.shape
    total = np.zeros(n, np.int64)
    for i in range(rows):
        total[:] = 0
        for t in range(count):
            for j in range(n):
                total[j] += (np.int64(taps[t, i, j]) - zero_point) * diagonals[t, j]
        for j in range(n):
            out[i, j] = np.int32(total[j])  # wraps like the accumulators


def diagonal_sums(taps: np.ndarray, zero_point: int, diagonals: np.ndarray) -> np.ndarray:
    """``sum_t (taps[t] - zero_point) @ diag(diagonals[t])`` wrapped to int32 for uint8 ``taps`` [T, M, n] (any
    strides) and int8 ``diagonals`` [T, n]: a depthwise program's product, ``T * n`` multiply-adds a row instead
    of the ``T * n * n`` of its diagonal weight tiles."""
    out = np.empty(taps.shape[1:], np.int32)
    _diagonal_sums(taps, np.int64(zero_point), np.ascontiguousarray(diagonals, dtype=np.int64), out)
    return out


@njit(**_JIT)
def _diagonal_maxima(taps, zero_point, diagonals, out):
    count, rows, n = taps.shape
    largest = np.empty(n, np.int64)
    for i in range(rows):
        for j in range(n):
            largest[j] = (np.int64(taps[0, i, j]) - zero_point) * diagonals[0, j]
        for t in range(1, count):
            for j in range(n):
                largest[j] = max(largest[j], (np.int64(taps[t, i, j]) - zero_point) * diagonals[t, j])
        for j in range(n):
            out[i, j] = np.int32(largest[j])


def diagonal_maxima(taps: np.ndarray, zero_point: int, diagonals: np.ndarray) -> np.ndarray:
    """``max_t (taps[t] - zero_point) * diagonals[t]`` as int32 for uint8 ``taps`` [T, M, n] (T >= 1, any strides)
    and int8 ``diagonals`` [T, n]: the largest of a max pool's diagonal weight tiles' products, elementwise."""
    out = np.empty(taps.shape[1:], np.int32)
    _diagonal_maxima(taps, np.int64(zero_point), np.ascontiguousarray(diagonals, dtype=np.int64), out)
    return out


@njit(**_JIT)
def _gather_rows(memory, sources, out):
    width = uint64(out.shape[1])
    flat = out.reshape(-1)
    for cell in range(sources.size):
        source, target = uint64(sources[cell]), uint64(cell) * width  # unsigned: no negative-index handling
        for j in range(uint64(0), width):
            flat[target + j] = memory[source + j]


def gather_rows(memory: np.ndarray, sources: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = memory[sources[i]:sources[i] + width]`` for a C-contiguous uint8 ``out`` [cells, width] and int64
    byte addresses ``sources``, each with its ``width`` bytes inside ``memory`` (the caller sees to that: the
    loop does not check)."""
    _gather_rows(memory, sources, out)


@njit(**_JIT)
def _differing_bits(a, b):
    bits = np.uint64(0)
    for i in range(a.size):
        bits |= np.uint64(a[i] ^ b[i])
    return bits


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two uint8 arrays of one shape hold the same bytes (one pass, eight bytes at a time, no temporary
    array)."""
    if a.shape != b.shape:
        return False
    a, b = np.ravel(a), np.ravel(b)
    whole = a.size - a.size % 8
    if _differing_bits(a[:whole].view(np.uint64), b[:whole].view(np.uint64)):
        return False
    return whole == a.size or not _differing_bits(a[whole:], b[whole:])
