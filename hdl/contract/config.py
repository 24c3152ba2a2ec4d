"""The one hardware configuration, read by the HDL generator and the host alike."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

__all__ = ["HardwareConfig", "INSTRUCTION_BYTES", "PRESETS", "preset"]

#: Every instruction is 256 bits wide (see docs/isa.md).
INSTRUCTION_BYTES = 32

_POWERS_OF_TWO_BYTES = (4, 8, 16, 32)


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass(frozen=True)
class HardwareConfig:
    """Parameters of one build of the matrix-vector unit.

    ``rows`` is the number of activation lanes (the reduction dimension one
    array pass covers) and ``cols`` the number of output channels computed at
    once. Buffer depths count entries: an activation entry holds ``rows``
    bytes, a weight entry ``cols`` bytes, an accumulator entry ``cols`` int32.
    ``float32_requant`` builds the post-processor's float32 requantization
    (STORE's ``float32_scale``); without it the post-processor is smaller and
    programs that use it are refused. ``residual_add`` builds the store unit's
    residual add (STORE's ``add``: onnxruntime's float32 QLinearAdd, two 53 x 9-bit
    products a lane); without it Adds stay on the host and programs that add are refused. ``max_pool`` builds
    the accumulators' maximum (COMPUTE's ``maximum``: ``cols`` 32-bit comparisons); without it max pooling stays
    on the host and programs that use it are refused.
    """

    rows: int = 32
    cols: int = 32
    act_depth: int = 2048
    wgt_depth: int = 1024
    acc_depth: int = 1024
    mem_bytes: int = 32
    queue_depth: int = 16
    clock_mhz: float = 100.0
    float32_requant: bool = True
    residual_add: bool = True
    max_pool: bool = True

    def __post_init__(self) -> None:
        for name in ("rows", "cols", "act_depth", "wgt_depth", "acc_depth", "queue_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
            if not _is_power_of_two(value):
                raise ValueError(f"{name} must be a power of two, not {value}")
        if not (2 <= self.rows <= 256 and 2 <= self.cols <= 256):
            raise ValueError(f"the array must be between 2x2 and 256x256, not {self.rows}x{self.cols}")
        if self.mem_bytes not in _POWERS_OF_TWO_BYTES:
            raise ValueError(f"mem_bytes must be one of {_POWERS_OF_TWO_BYTES}, not {self.mem_bytes!r}")
        if self.rows % self.mem_bytes or self.cols % self.mem_bytes:
            raise ValueError(
                f"rows ({self.rows}) and cols ({self.cols}) must be multiples of "
                f"mem_bytes ({self.mem_bytes}): each buffer entry is a whole number of memory beats")
        for name in ("act_depth", "wgt_depth", "acc_depth"):
            depth = getattr(self, name)
            if not 2 <= depth <= 65536:
                raise ValueError(f"{name} must be between 2 and 65536 entries, not {depth}")
        if self.wgt_depth < 2 * self.rows:
            raise ValueError(
                f"wgt_depth ({self.wgt_depth}) must hold at least two weight tiles "
                f"({2 * self.rows} entries)")
        if not 2 <= self.queue_depth <= 256:
            raise ValueError(f"queue_depth must be between 2 and 256, not {self.queue_depth}")
        if not (isinstance(self.clock_mhz, (int, float)) and self.clock_mhz > 0):
            raise ValueError(f"clock_mhz must be a positive number, not {self.clock_mhz!r}")
        for name in ("float32_requant", "residual_add", "max_pool"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be true or false, not {getattr(self, name)!r}")

    # Derived sizes -------------------------------------------------------

    @property
    def macs_per_cycle(self) -> int:
        return self.rows * self.cols

    def modelled_ms(self, cycles: float) -> float:
        """Milliseconds that ``cycles`` take at the configured clock."""
        return cycles / (self.clock_mhz * 1e3)

    @property
    def act_entry_bytes(self) -> int:
        return self.rows

    @property
    def wgt_entry_bytes(self) -> int:
        return self.cols

    @property
    def acc_entry_bytes(self) -> int:
        return 4 * self.cols

    @property
    def param_block_bytes(self) -> int:
        """Bytes of one requantization block: bias, multiplier and shift, ``cols`` int32 each."""
        return 3 * 4 * self.cols

    @property
    def psum_bits(self) -> int:
        """Width of partial sums inside the array.

        ``rows`` 17-bit products need only ``17 + log2(rows)`` bits, but a full
        32-bit word lets a cycle-based simulator add without masking or sign
        extension (measured: about 15 % faster); an FPGA build pays ~11 flip-flops
        per cell for it.
        """
        return 32

    # Identity -------------------------------------------------------------

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HardwareConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown hardware configuration keys: {', '.join(unknown)}")
        return cls(**data)

    @property
    def fingerprint(self) -> int:
        """A 32-bit hash of the configuration, also readable from the hardware's CSRs."""
        # Options added later count only when they differ from their default, so older
        # configurations (and the bitstreams and packages built for them) keep their fingerprint.
        identity = {name: value for name, value in self.to_dict().items()
                    if not (name in _LATER_OPTIONS and value == _LATER_OPTIONS[name])}
        text = json.dumps(identity, sort_keys=True).encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")

    def describe(self) -> str:
        return (f"{self.rows}x{self.cols} array, act {self.act_depth}, wgt {self.wgt_depth}, "
                f"acc {self.acc_depth} entries, {8 * self.mem_bytes}-bit memory port, "
                f"{self.clock_mhz:g} MHz" + ("" if self.float32_requant else ", no float32 requantization")
                + ("" if self.residual_add else ", no residual add") + ("" if self.max_pool else ", no max pool"))


#: Options added after the first bitstreams and packages, with the default they had before.
_LATER_OPTIONS = {"float32_requant": True, "residual_add": True, "max_pool": False}

#: Named configurations, each sized to its board's chip (budgets and estimates: hdl/resources.py).
PRESETS: dict[str, HardwareConfig] = {
    "default": HardwareConfig(),
    # LFE5U-85F (156 MULT18X18D): an 8x8 array (64) and an 8-lane fixed-point post-processor (4 each), without the
    # residual add (its 48 multipliers and 7.6 k LUT4). 50 MHz: nextpnr's report in the README's board table.
    "ulx3s-85f": HardwareConfig(rows=8, cols=8, act_depth=2048, wgt_depth=1024, acc_depth=1024, mem_bytes=8,
                                clock_mhz=50.0, float32_requant=False, residual_add=False, max_pool=False),
    # iCE40UP5K: the smallest array the contract allows.
    "icebreaker": HardwareConfig(rows=4, cols=4, act_depth=512, wgt_depth=256, acc_depth=256, mem_bytes=4,
                                 queue_depth=4, clock_mhz=12.0, float32_requant=False, residual_add=False,
                                 max_pool=False),
}


def preset(name: str) -> HardwareConfig:
    """The preset ``name``; a ValueError lists the presets when there is none."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"no hardware preset {name!r}; presets: {', '.join(PRESETS)}") from None
