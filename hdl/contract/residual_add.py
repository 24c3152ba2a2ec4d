"""The requantizing residual add of a STORE (docs/isa.md): onnxruntime's QLinearAdd of the requantized codes
and an addend row, done exactly in integers, and the add block that carries its coefficients.

The arithmetic, for codes ``q`` (the STORE's requantized row) and ``b`` (the addend row), both uint8::

    x_in, x_out, r_in, r_out = (q, b, ratio_q, ratio_b) if q_inner else (b, q, ratio_b, ratio_q)
    out = clamp(rint(fma(r_out, x_out, fma(r_in, x_in, start))), low, high)

in float32 (each fused multiply-add exact, then rounded once to float32, half to even; ``rint`` half to even).
onnxruntime's ``fma(ratio_a, a, fma(ratio_b, b, start))`` is this with ``q`` as ``a`` (``q_inner`` false) or as
``b`` (``q_inner`` true). The coefficients are held as integers on one grid, ``ratio = M * 2**-shift``: where
float32 values lie on that grid with the bounds below, every float32 rounding is rounding to 24 significant
bits of an integer, so the integer model equals the float32 definition exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["ADD_BLOCK_BYTES", "RATIO_LIMIT", "START_LIMIT", "ResidualAdd", "add_table", "residual_add",
           "round_significant", "round_shift"]

#: Bytes of a STORE's add block, read after its parameter block.
ADD_BLOCK_BYTES = 32
_SIGNIFICAND = 24  # bits of a float32 significand, hidden bit included
RATIO_LIMIT = 1 << 52  # |ratio * 2**shift| below this: a product with a byte stays under 2**60
START_LIMIT = 1 << 60  # |start * 2**shift| below this: every intermediate stays under 2**63
_BLOCK = np.dtype([("ratio_q", "<i8"), ("ratio_b", "<i8"), ("start", "<i8"), ("addend_offset", "<i4"),
                   ("shift", "u1"), ("q_inner", "u1"), ("low", "u1"), ("high", "u1")])
assert _BLOCK.itemsize == ADD_BLOCK_BYTES


def round_shift(value: np.ndarray, amount: np.ndarray) -> np.ndarray:
    """``value / 2**amount`` (int64, ``amount`` 0..63) rounded half to even, by magnitude and sign."""
    value, amount = np.asarray(value, np.int64), np.asarray(amount, np.int64)
    magnitude = np.abs(value)
    quotient = magnitude >> amount
    remainder = magnitude - (quotient << amount)
    half = np.where(amount > 0, np.left_shift(np.int64(1), np.maximum(amount - 1, 0)), 1)  # amount 0: never up
    up = (remainder > half) | ((remainder == half) & (quotient & 1 == 1) & (amount > 0))
    return np.where(value < 0, -(quotient + up), quotient + up)


def _bit_length(magnitude: np.ndarray) -> np.ndarray:
    """Bits of each non-negative int64 (0 for 0): frexp of the nearest float64, corrected where it rounded up."""
    length = np.frexp(magnitude.astype(np.float64))[1].astype(np.int64)
    return length - ((magnitude >> np.maximum(length - 1, 0)) == 0) * (length > 0)


def round_significant(value: np.ndarray) -> np.ndarray:
    """``value`` (int64) rounded to 24 significant bits, half to even: float32 rounding on an integer grid."""
    value = np.asarray(value, np.int64)
    drop = np.maximum(_bit_length(np.abs(value)) - _SIGNIFICAND, 0)
    return round_shift(value, drop) << drop


def _fixed(value: np.float32) -> tuple[int, int]:
    """``(M, e)`` with ``value == M * 2**e`` exactly and M odd (or 0)."""
    fraction, exponent = np.frexp(np.float64(value))
    significand, exponent = int(fraction * (1 << _SIGNIFICAND)), int(exponent) - _SIGNIFICAND
    if significand == 0:
        return 0, 0
    while significand % 2 == 0:
        significand, exponent = significand // 2, exponent + 1
    return significand, exponent


@dataclass(frozen=True)
class ResidualAdd:
    """One add's coefficients on the grid ``2**-shift``, the addend's place (``addend_offset`` bytes after the
    STORE's row) and the add's clamp ``low .. high``."""

    ratio_q: int
    ratio_b: int
    start: int
    shift: int
    q_inner: bool = False
    low: int = 0
    high: int = 255
    addend_offset: int = 0

    def __post_init__(self):
        if not 0 <= self.shift <= 63:
            raise ValueError(f"the add's shift {self.shift} must lie in 0..63")
        if max(abs(self.ratio_q), abs(self.ratio_b)) >= RATIO_LIMIT or abs(self.start) >= START_LIMIT:
            raise ValueError("the add's ratios must stay below 2**52 and its start below 2**60 on its grid")
        if not 0 <= self.low <= self.high <= 255:
            raise ValueError(f"the add's clamp {self.low}..{self.high} must lie within 0..255")
        if not -(1 << 31) <= self.addend_offset < 1 << 31:
            raise ValueError(f"the addend offset {self.addend_offset} must fit int32")

    @classmethod
    def from_float32(cls, ratio_q, ratio_b, start, *, q_inner: bool = False, low: int = 0, high: int = 255,
                     addend_offset: int = 0) -> "ResidualAdd":
        """The add of float32 coefficients, exactly; ``ValueError`` when they do not fit one grid's bounds."""
        values = [np.float32(v) for v in (ratio_q, ratio_b, start)]
        if not all(np.isfinite(v) for v in values):
            raise ValueError(f"the add's coefficients {values} must be finite")
        parts = [_fixed(v) for v in values]
        shift = max([0, *(-e for m, e in parts if m)])
        if shift > 63:
            raise ValueError(f"the add's coefficients {values} need {shift} fraction bits; at most 63 fit")
        q, b, s = (m << (e + shift) for m, e in parts)
        return cls(q, b, s, shift, q_inner, low, high, addend_offset)

    def block(self) -> np.ndarray:
        """The :data:`ADD_BLOCK_BYTES` bytes of the add block."""
        fields = (self.ratio_q, self.ratio_b, self.start, self.addend_offset, self.shift, self.q_inner, self.low,
                  self.high)
        return np.array([fields], dtype=_BLOCK).view(np.uint8)

    @classmethod
    def from_block(cls, block: np.ndarray) -> "ResidualAdd":
        """The add an add block holds (``ValueError`` for one the hardware cannot hold)."""
        f = np.asarray(block, np.uint8)[:ADD_BLOCK_BYTES].view(_BLOCK)[0]
        return cls(int(f["ratio_q"]), int(f["ratio_b"]), int(f["start"]), int(f["shift"]), bool(f["q_inner"] & 1),
                   int(f["low"]), int(f["high"]), int(f["addend_offset"]))

    def __call__(self, q: np.ndarray, b: np.ndarray) -> np.ndarray:
        """:func:`residual_add` of ``q`` and ``b`` (uint8 arrays of one shape), looked up in :func:`add_table`."""
        q, b = np.asarray(q, np.uint8), np.asarray(b, np.uint8)
        index = (q.astype(np.uint16) << 8) | b
        return np.take(add_table(self).reshape(-1), index)


@lru_cache(maxsize=256)
def add_table(add: ResidualAdd) -> np.ndarray:
    """Every sum of the add: uint8 ``[256, 256]`` indexed ``[q, b]`` (a byte pair has 65,536 values, so one
    evaluation of :func:`residual_add` each is the fastest exact way to add whole tensors)."""
    codes = np.arange(256, dtype=np.uint8)
    return residual_add(codes[:, None], codes[None, :], add)


def residual_add(q: np.ndarray, b: np.ndarray, add: ResidualAdd) -> np.ndarray:
    """The sum of codes ``q`` and addend ``b`` (uint8, broadcasting) as uint8, as the store unit computes it."""
    q, b = np.asarray(q, np.uint8).astype(np.int64), np.asarray(b, np.uint8).astype(np.int64)
    (x_in, r_in), (x_out, r_out) = ((q, add.ratio_q), (b, add.ratio_b))[::1 if add.q_inner else -1]
    inner = round_significant(x_in * r_in + add.start)
    outer = round_significant(x_out * r_out + inner)
    return np.clip(round_shift(outer, add.shift), add.low, add.high).astype(np.uint8)
