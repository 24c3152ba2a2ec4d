"""The core and the host link on one memory port, the core first."""

from amaranth import Cat, Const, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mvu.hdl.host_link import LinkMemory
from mvu.hdl.interfaces import READ_ID_BITS, MemoryBus, MemoryPort

__all__ = ["MemoryArbiter", "ID_BITS"]

#: Width of the port's read tags: the core's reader id, and a bit above it set for the host link's reads.
ID_BITS = READ_ID_BITS + 1


class MemoryArbiter(wiring.Component):
    """Joins the core's memory bus and the host link's into one :class:`MemoryPort`, combinationally.

    A read request or a write beat of the core's goes out before the link's when both wait. The link's
    reads carry id ``1 << READ_ID_BITS``; each response beat goes back to the side its id names. The core's
    writes are whole beats (every ``mask`` bit set).

    Members:
        core: ``In(MemoryBus(beat_bytes))``: the core's port.
        link: ``In(LinkMemory(beat_bytes))``: the host link's port.
        port: ``Out(MemoryPort(beat_bytes, ID_BITS))``: to the memory.
    """

    def __init__(self, beat_bytes: int):
        self.beat_bytes = beat_bytes
        super().__init__({"core": In(MemoryBus(beat_bytes)), "link": In(LinkMemory(beat_bytes)),
                          "port": Out(MemoryPort(beat_bytes, ID_BITS))})

    def elaborate(self, platform):
        m = Module()
        core, link, port = self.core, self.link, self.port
        link_id = Const(1 << READ_ID_BITS, ID_BITS)

        m.d.comb += [port.req.valid.eq(core.req.valid | link.req.valid),
                     core.req.ready.eq(port.req.ready), link.req.ready.eq(port.req.ready & ~core.req.valid)]
        with m.If(core.req.valid):
            m.d.comb += port.req.payload.eq(core.req.payload)
        with m.Else():
            m.d.comb += port.req.payload.eq(Cat(link.req.p.addr, link.req.p.len, link_id))

        for_link = port.resp.p.id[READ_ID_BITS]
        m.d.comb += [core.resp.valid.eq(port.resp.valid & ~for_link), core.resp.p.data.eq(port.resp.p.data),
                     core.resp.p.id.eq(port.resp.p.id[:READ_ID_BITS]),
                     link.resp.valid.eq(port.resp.valid & for_link), link.resp.payload.eq(port.resp.p.data)]

        m.d.comb += [port.write.valid.eq(core.write.valid | link.write.valid),
                     core.write.ready.eq(port.write.ready), link.write.ready.eq(port.write.ready & ~core.write.valid)]
        with m.If(core.write.valid):
            m.d.comb += [port.write.p.data.eq(core.write.p.data), port.write.p.addr.eq(core.write.p.addr),
                         port.write.p.mask.eq((1 << self.beat_bytes) - 1)]
        with m.Else():
            m.d.comb += port.write.payload.eq(link.write.payload)
        return m
