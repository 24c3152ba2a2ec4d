"""Depthwise convolutions as programs for the matrix-vector unit: window LOADs, diagonal weight tiles, accumulation.

A depthwise convolution filters each channel on its own: ``y[p, c] = sum_t (x[p + t, c] - zp) * w[c, t]``. Over a
group of ``rows`` channels, one kernel tap ``t`` is the product of the tap's window entries (each one pixel's
``rows`` channels, as a window LOAD reads them) with the diagonal tile ``diag(w[group, t])``; COMPUTEs accumulate the
taps' products, and the STOREs requantize the sums like any product's. The array does ``rows`` useful MACs a cycle
(one pixel, ``rows`` channels, one tap) instead of ``rows * cols``, but the layer needs no new hardware and no host
pass (docs/compiler.md, "Depthwise convolutions", weighs it against a dedicated engine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvu.hdl.contract.config import HardwareConfig
from mvu.host.gemm import ConvolutionInput, GemmError, GemmProgram, GemmTiling, plan_gemm

__all__ = ["DepthwiseProgram", "depthwise_limit"]


def depthwise_limit(config: HardwareConfig, conv: ConvolutionInput) -> str | None:
    """What keeps a depthwise convolution over ``conv`` off the accelerator of ``config``, or ``None``: what window
    LOADs cannot express (the array's sides, powers of two, always divide one another)."""
    return conv.limit()


@dataclass(frozen=True)
class _DepthwiseInput(ConvolutionInput):
    """A depthwise convolution's input: its product's K is ``lanes`` per tap (the diagonal tiles' rows), not the
    tap's channels."""

    lanes: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.out_size[0] * self.out_size[1] * self.x.shape[0], self.kernel[0] * self.kernel[1] * self.lanes


class DepthwiseProgram(GemmProgram):
    """A depthwise convolution laid out in memory with the program that computes it.

    ``conv`` holds the channels-last input ``[N, H, W, C]`` and the windows; ``weights`` are ``[C, kh, kw]`` (or
    ONNX's ``[C, 1, kh, kw]``) int8; ``requant`` has one entry per channel (``None``: raw int32 sums). The
    product's rows are the output pixels, image after image, and its columns the channels; :meth:`result` reads
    them back as ``[N * Ho * Wo, C]``. Column tile ``nt`` (``cols`` channels) reads, for each tap, the
    ``max(1, cols / rows)`` activation tiles holding its channels, against weight tiles that are zero but for one
    weight per channel: K is ``taps * max(rows, cols)`` whatever the channel count.
    """

    def __init__(self, config: HardwareConfig, conv: ConvolutionInput, weights: np.ndarray, *,
                 tiling: GemmTiling | None = None, memory_bytes_per_cycle: float | None = None, **options):
        problem = depthwise_limit(config, conv)
        if problem is not None:
            raise GemmError(problem)
        R, C = config.rows, config.cols  # powers of two: one divides the other
        channels, taps = conv.x.shape[3], conv.kernel[0] * conv.kernel[1]
        weights = np.asarray(weights)
        if weights.dtype != np.int8 or weights.size != channels * taps:
            raise GemmError(f"depthwise weights are int8 [{channels}, {conv.kernel[0]}, {conv.kernel[1]}], "
                            f"not {weights.dtype} {list(weights.shape)}")
        self._subtiles, self._channels, self._rows = max(1, C // R), channels, R  # subtiles: per column tile, tap
        self._width, self._zero_point = -(-channels // max(R, C)) * max(R, C), options.get("act_zero_point", 0)
        padded = self._padded(conv)
        m, k = padded.shape
        tiling = tiling or plan_gemm(config, m, k, C, bytes_per_cycle=memory_bytes_per_cycle or config.mem_bytes)
        if tiling.n_block != 1:
            raise GemmError(f"a depthwise program's blocks are one column tile wide, not {tiling.n_block}")
        # K row (tap, subtile, r) of channel c's column holds c's tap weight where r is c's lane in the activation
        # tile that column tile's K tile (tap, subtile) reads.
        w = np.zeros((k, channels), np.int8)
        channel = np.arange(channels)
        subtile = (channel - channel // C * C // R * R) // R
        w[np.arange(taps)[:, None] * self._subtiles * R + subtile * R + channel % R, channel] = \
            weights.reshape(channels, taps).T
        super().__init__(config, padded, w, tiling=tiling, memory_bytes_per_cycle=memory_bytes_per_cycle, **options)

    @property
    def macs(self) -> int:
        """Useful multiply-accumulates: one per output pixel, channel and tap."""
        return self.m * self.k // (self._subtiles * self.config.rows) * self.n

    def _padded(self, conv: ConvolutionInput) -> _DepthwiseInput:
        """``conv`` with its channels padded with the zero point to whole column tiles (and ``rows``-wide tiles)."""
        x = conv.x
        if x.shape[3] != self._width:
            x = np.full((*conv.x.shape[:3], self._width), self._zero_point, dtype=conv.dtype)
            x[..., :self._channels] = conv.x
        return _DepthwiseInput(x, conv.kernel, conv.strides, conv.pads, conv.dilations, self._subtiles * self._rows)

    def _padded_k(self) -> int:
        return self.k

    def _activation_tiles(self, k_tiles: np.ndarray, n_tile: int) -> np.ndarray:
        """Tap ``k // subtiles``'s activation tile ``k % subtiles`` of those holding column tile ``n_tile``'s
        channels."""
        R, C = self.config.rows, self.config.cols
        tap, subtile = np.divmod(k_tiles, self._subtiles)
        return tap * (self.conv.x.shape[3] // R) + n_tile * C // R + subtile

    def _weight_rows(self) -> np.ndarray:
        return np.arange(self.k)

    def load_activations(self, conv: ConvolutionInput) -> None:
        """A new input of the program's geometry (unpadded channels), so that the program can run again."""
        if not isinstance(conv, ConvolutionInput) or conv.x.shape[3] != self._channels:
            raise GemmError(f"expected a convolution input of {self._channels} channels like the program's")
        super().load_activations(self._padded(conv))
