"""``memory_bytes`` of on-chip block RAM behind a :class:`~mvu.hdl.interfaces.MemoryPort`."""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.utils import ceil_log2, exact_log2

from mvu.hdl.interfaces import MemoryPort

__all__ = ["BlockRamMemory"]


class BlockRamMemory(wiring.Component):
    """A memory of ``memory_bytes`` in block RAM, ``beat_bytes`` wide (a power of two), reads tagged with
    ``id_bits``.

    It answers one read request at a time, a beat a cycle from the cycle after the request is taken (the
    next request is taken as the last beat comes out); a write takes one cycle, always ready. Addresses past
    the memory wrap around. Its contents start at zero.

    Members:
        req, resp, write: a flipped ``MemoryPort(beat_bytes, id_bits)`` (:class:`~mvu.hdl.interfaces.MemoryPort`).
    """

    def __init__(self, beat_bytes: int, memory_bytes: int, *, id_bits: int):
        self.beat_bytes, self.memory_bytes = beat_bytes, memory_bytes
        super().__init__(dict(MemoryPort(beat_bytes, id_bits).flip().members))

    def elaborate(self, platform):
        m = Module()
        B = self.beat_bytes
        lane_bits, index_bits = exact_log2(B), ceil_log2(self.memory_bytes // B)
        m.submodules.memory = memory = Memory(shape=8 * B, depth=self.memory_bytes // B, init=[])
        read, write = memory.read_port(), memory.write_port(granularity=8)

        # ``issued``: the read port answers the address of the cycle before.
        active, issued = Signal(), Signal()
        address, left, read_id = Signal(32), Signal(16), Signal.like(self.req.p.id)
        m.d.comb += self.req.ready.eq(~active)
        with m.If(self.req.valid & ~active):
            m.d.sync += [address.eq(self.req.p.addr), left.eq(self.req.p.len), read_id.eq(self.req.p.id),
                         active.eq(self.req.p.len != 0)]
        m.d.comb += read.addr.eq(address[lane_bits:lane_bits + index_bits])
        m.d.sync += issued.eq(active)
        with m.If(active):
            m.d.sync += [address.eq(address + B), left.eq(left - 1), active.eq(left != 1)]
        m.d.comb += [self.resp.valid.eq(issued), self.resp.p.data.eq(read.data), self.resp.p.id.eq(read_id)]

        m.d.comb += [self.write.ready.eq(1), write.addr.eq(self.write.p.addr[lane_bits:lane_bits + index_bits]),
                     write.data.eq(self.write.p.data),
                     write.en.eq(self.write.p.mask & self.write.valid.replicate(B))]
        return m
