"""Requantization as the post-processor does it (docs/isa.md): its arithmetic from int32 sums to bytes,
fixed-point multipliers and float32 significands, and the STORE parameter blocks that carry them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mvu.hdl.contract.config import HardwareConfig

__all__ = ["requantize", "float32_scales", "SIGNIFICAND_BITS", "quantize_multiplier", "float32_significand",
           "Requantization", "requantization_block"]

SIGNIFICAND_BITS = 24  # a float32's significand, hidden bit included


def float32_scales(multiplier, shift) -> np.ndarray:
    """The float32 scales ``(multiplier mod 2**24) * 2**-shift`` that float32-scale STOREs multiply by
    (exact: a 24-bit significand and an exponent of at least -63 make a normal float32)."""
    significand = np.asarray(multiplier, dtype=np.int64) & ((1 << SIGNIFICAND_BITS) - 1)
    return np.ldexp(significand.astype(np.float64), -np.asarray(shift, dtype=np.int64)).astype(np.float32)


def requantize(acc: np.ndarray, bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
               out_zero_point, clamp_min, clamp_max, *, float32_scale: bool = False) -> np.ndarray:
    """The post-processing unit's arithmetic (docs/isa.md), rows x channels -> bytes.

    Parameters broadcast against ``acc``: per channel, or per row and channel.
    ``float32_scale`` selects float32 arithmetic (onnxruntime's requantization):
    ``float32(x) * float32_scales(multiplier, shift)``, rounded half to even.
    """
    # int32 additions wrap modulo 2**32; the rest happens in place on one int64 array.
    total = np.add(acc, np.asarray(bias).astype(np.int32), dtype=np.int32)
    if float32_scale:
        scaled = np.rint(total.astype(np.float32) * float32_scales(multiplier, shift))  # float32 product
        x = scaled.astype(np.int64) + out_zero_point  # |scaled| < 2**55
        np.clip(x, clamp_min, clamp_max, out=x)
        return x.astype(np.uint8)
    x = np.multiply(total, np.asarray(multiplier, dtype=np.int64), dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    x += np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    x >>= shift
    x += out_zero_point
    np.clip(x, clamp_min, clamp_max, out=x)
    return x.astype(np.uint8)  # the low byte: int8 results in two's complement


def quantize_multiplier(scale: float) -> tuple[int, int]:
    """Fixed-point form of a positive ``scale``: ``(multiplier, shift)`` with
    ``scale ~= multiplier * 2**-shift``, ``multiplier < 2**31`` and ``0 <= shift <= 63``."""
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"a requantization scale must be positive and finite, not {scale}")
    exponent = math.floor(math.log2(scale))
    shift = 30 - exponent
    if shift < 0:
        raise ValueError(f"scale {scale} is too large for the post-processor (at most 2**30)")
    if shift > 63:
        return int(round(scale * 2.0 ** 63)), 63
    multiplier = int(round(scale * 2.0 ** shift))
    if multiplier == 1 << 31:
        multiplier, shift = 1 << 30, shift - 1
    return multiplier, shift


def float32_significand(scale) -> tuple[int, int]:
    """``(significand, shift)`` with ``significand * 2**-shift == float32(scale)`` exactly, ``significand <
    2**24`` and ``0 <= shift <= 63``, for the post-processor's float32 mode; scales beyond that range give
    the same results as the nearest end of it (any sum times a scale below 2**-40 rounds to 0; one of
    2**24 or more saturates every non-zero sum)."""
    scale = np.float32(scale)
    if not (scale >= 0 and np.isfinite(scale)):
        raise ValueError(f"a requantization scale must be non-negative and finite, not {scale}")
    fraction, exponent = math.frexp(float(scale))  # scale = fraction * 2**exponent, 0.5 <= fraction < 1
    shift = SIGNIFICAND_BITS - exponent
    if scale == 0 or shift > 63:
        return 0, 0
    if shift < 0:
        return (1 << SIGNIFICAND_BITS) - 1, 0
    return int(fraction * (1 << SIGNIFICAND_BITS)), shift


@dataclass(frozen=True)
class Requantization:
    """Per-output-channel requantization as the post-processor applies it (docs/isa.md): in fixed point,
    or with ``float32_scale`` in float32 arithmetic (multipliers are then 24-bit significands)."""

    bias: np.ndarray
    multiplier: np.ndarray
    shift: np.ndarray
    out_zero_point: int = 0
    clamp_min: int = -128
    clamp_max: int = 127
    float32_scale: bool = False

    def __post_init__(self):
        for name in ("bias", "multiplier", "shift"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64).reshape(-1))
        if not (self.bias.size == self.multiplier.size == self.shift.size):
            raise ValueError(f"bias, multiplier and shift must have one value per channel; got sizes "
                             f"{self.bias.size}, {self.multiplier.size}, {self.shift.size}")
        if ((self.bias < -(1 << 31)) | (self.bias >= 1 << 31)).any():
            raise ValueError("bias values must fit int32")
        if ((self.multiplier < 0) | (self.multiplier >= 1 << 31)).any():
            raise ValueError("multipliers must lie in 0 .. 2**31 - 1")
        if self.float32_scale and (self.multiplier >= 1 << SIGNIFICAND_BITS).any():
            raise ValueError("float32 significands must lie in 0 .. 2**24 - 1")
        if ((self.shift < 0) | (self.shift > 63)).any():
            raise ValueError("shifts must lie in 0 .. 63")
        if not -128 <= self.clamp_min <= self.clamp_max <= 255:
            raise ValueError(f"clamp range {self.clamp_min}..{self.clamp_max} must lie within -128..255")
        if self.clamp_min < 0 and self.clamp_max > 127:
            raise ValueError(f"clamp range {self.clamp_min}..{self.clamp_max} is neither int8 nor uint8")

    @property
    def channels(self) -> int:
        return self.bias.size

    @property
    def output_dtype(self) -> np.dtype:
        return np.dtype(np.int8) if self.clamp_min < 0 else np.dtype(np.uint8)

    @classmethod
    def from_scales(cls, scales, bias=None, *, out_zero_point: int = 0, clamp_min: int = -128,
                    clamp_max: int = 127) -> "Requantization":
        scales = np.asarray(scales, dtype=np.float64).reshape(-1)
        pairs = [quantize_multiplier(float(s)) for s in scales]
        bias = np.zeros(scales.size, dtype=np.int64) if bias is None else bias
        return cls(bias=bias, multiplier=[p[0] for p in pairs], shift=[p[1] for p in pairs],
                   out_zero_point=out_zero_point, clamp_min=clamp_min, clamp_max=clamp_max)

    @classmethod
    def from_float32_scales(cls, scales, bias=None, *, out_zero_point: int = 0, clamp_min: int = -128,
                            clamp_max: int = 127) -> "Requantization":
        """onnxruntime's requantization: ``float32(sum + bias) * float32(scale)``, rounded half to even."""
        scales = np.asarray(scales, dtype=np.float32).reshape(-1)
        pairs = [float32_significand(s) for s in scales]
        bias = np.zeros(scales.size, dtype=np.int64) if bias is None else bias
        return cls(bias=bias, multiplier=[p[0] for p in pairs], shift=[p[1] for p in pairs],
                   out_zero_point=out_zero_point, clamp_min=clamp_min, clamp_max=clamp_max, float32_scale=True)


def requantization_block(config: HardwareConfig, bias, multiplier, shift) -> np.ndarray:
    """The bytes of one STORE parameter block: ``cols`` int32 bias, multiplier and shift."""
    block = np.zeros((3, config.cols), dtype=np.int32)
    for row, values in enumerate((bias, multiplier, shift)):
        values = np.asarray(values, dtype=np.int64).reshape(-1)
        if values.size > config.cols:
            raise ValueError(f"{values.size} channels do not fit one block of {config.cols}")
        block[row, :values.size] = values
    return block.view(np.uint8).reshape(-1)
