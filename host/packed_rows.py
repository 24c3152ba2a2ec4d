"""Convolutions over few channels (a network's 3-channel stem) as programs whose K tiles are whole kernel rows.

Window LOADs that read one tap per K tile pad each tap's ``C`` channels to ``rows`` lanes: a 7x7 stem over 3
channels would take 49 K tiles. Here the input is stored with its own ``C`` channels, padded horizontally with the
zero point so that no window reaches past a row's end, and K tile ``ty`` is kernel row ``ty``: output pixel
``(oy, ox)``'s entry is the ``rows`` bytes from input pixel ``(oy * sy + ty * dy - pad_top, ox * sx)`` of the
padded tensor on, a window LOAD at any byte (docs/isa.md, "LOAD with window"). Lanes ``tx * C + c`` carry weight
``(ty, tx, c)``; the lanes past ``kw * C`` have zero weights, so the next pixels' bytes they read add nothing.
K is ``kh * rows`` (7 tiles for ResNet's stem, against 5 for host patches), and the host forms no patches.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from mvu.hdl.contract.config import HardwareConfig
from mvu.host.gemm import ConvolutionInput, GemmError, GemmProgram

__all__ = ["RowPackedInput", "RowPackedProgram", "packed_rows_limit"]


@dataclass(frozen=True)
class RowPackedInput(ConvolutionInput):
    """A convolution's input read a kernel row per K tile of ``rows`` lanes (the array's rows)."""

    rows: int = 0

    @property
    def padded_width(self) -> int:
        """Columns of the stored tensor: the left pads, the input, and right pads as far as the last window reads."""
        _, _, w, _ = self.x.shape
        left, kw, sw = self.pads[1], self.kernel[1], self.strides[1]
        return max(left + w, (self.out_size[1] - 1) * sw + kw)

    def limit(self) -> str | None:
        """What row-packed window LOADs cannot express of this convolution, or ``None``: each kernel row is one
        window over the padded tensor, so its horizontal taps, pads and dilation are the entry's lanes."""
        if self.x.ndim != 4 or min(self.out_size) < 1 or min(self.kernel) < 1 or min(self.dilations) < 1:
            return super().limit()
        (kh, kw), (n, h, _, channels) = self.kernel, self.x.shape
        if self.dilations[1] != 1:
            return f"row-packed taps need dilation 1 along the width, not {self.dilations[1]}"
        if kw * channels > self.rows:
            return (f"a kernel row of {kw} taps x {channels} channels does not fit a K tile of {self.rows} lanes "
                    f"(row-packed taps)")
        top, _, bottom, _ = self.pads
        kernel_rows = ConvolutionInput(np.broadcast_to(np.zeros(1, self.dtype), (n, h, self.padded_width, channels)),
                                       (kh, 1), self.strides, (top, 0, bottom, 0), (self.dilations[0], 1))
        problem = kernel_rows.limit()
        return None if problem is None else (f"row-packed taps (kernel rows over {self.padded_width} padded "
                                             f"columns): {problem}")


def packed_rows_limit(config: HardwareConfig, conv: ConvolutionInput) -> str | None:
    """What keeps ``conv`` from reading its input a kernel row per K tile on ``config``'s array, or ``None``."""
    return _packed(conv, config.rows).limit()


def _packed(conv: ConvolutionInput, rows: int) -> RowPackedInput:
    return RowPackedInput(**{f.name: getattr(conv, f.name) for f in fields(ConvolutionInput)}, rows=rows)


class RowPackedProgram(GemmProgram):
    """A convolution laid out in memory with the program that computes it, a kernel row per K tile.

    ``conv`` and the weights ``w`` ``[kh * kw * C, N]`` (rows ordered like host patches') and the options are
    :class:`~mvu.host.gemm.GemmProgram`'s; :meth:`result` reads the ``[images * Ho * Wo, filters]`` outputs back. The input is stored
    ``[N][H][Wp][C]`` (``Wp``: :attr:`RowPackedInput.padded_width`), followed by the bytes the last entries read
    past it.
    """

    def __init__(self, config: HardwareConfig, conv: ConvolutionInput, w: np.ndarray, **options):
        super().__init__(config, _packed(conv, config.rows), w, **options)

    def _padded_k(self) -> int:
        return self.conv.kernel[0] * self.config.rows

    def _weight_rows(self) -> np.ndarray:
        """Weight ``(ty, tx, c)`` in lane ``tx * C + c`` of K tile ``ty``."""
        kh, kw = self.conv.kernel
        return (np.arange(kh)[:, None] * self.config.rows + np.arange(kw * self.conv.x.shape[3])).ravel()

    def _tensor_shape(self) -> tuple[int, int, int, int]:
        n, h, _, c = self.conv.x.shape
        return n, h, self.conv.padded_width, c

    def _activation_bytes(self) -> int:
        """The padded tensor and the ``rows - C`` bytes its last entry reads past it, to the end of a beat."""
        beat, c = self.config.mem_bytes, self.conv.x.shape[3]
        return -(-(int(np.prod(self._tensor_shape())) + self.config.rows - c) // beat) * beat

    def _padded_activations(self, a: RowPackedInput) -> np.ndarray:
        """The padded tensor's bytes and what its last entries read past it, all the zero point but the input."""
        stored = np.full(self._activation_bytes(), self.act_zero_point, dtype=a.dtype)
        tensor = stored[:int(np.prod(self._tensor_shape()))].reshape(self._tensor_shape())
        tensor[:, :, a.pads[1]:a.pads[1] + a.x.shape[2]] = a.x
        return stored

    def _activation_region(self) -> np.ndarray:
        """The input's pixels in the program's memory: ``[N][H][W][C]``, inside the padded tensor."""
        size = int(np.prod(self._tensor_shape()))
        tensor = self.program.memory.data[self._a_base:self._a_base + size].reshape(self._tensor_shape())
        left = self.conv.pads[1]
        return tensor[:, :, left:left + self.conv.x.shape[2]]

    def _window_fields(self, k_tiles: np.ndarray) -> dict:
        """Kernel row ``ty``'s entries: ``rows`` bytes from pixel ``(oy * sy + ty * dy - pad_top, ox * sx)``, the
        window's ``fill`` above and below the input."""
        _, h, wp, c = self._tensor_shape()
        return dict(dram_addr=0, dram_stride=c, row_stride=wp * c, in_h=h, in_w=wp,
                    offset_y=k_tiles * self.conv.dilations[0] - self.conv.pads[0], offset_x=0)

    def load_activations(self, conv: ConvolutionInput) -> None:
        """A new input of the program's geometry, so that the program can run again."""
        if not isinstance(conv, ConvolutionInput):
            raise GemmError(f"expected a convolution input like the program's, not {type(conv).__name__}")
        super().load_activations(_packed(conv, self.config.rows))
