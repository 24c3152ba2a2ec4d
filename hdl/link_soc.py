"""The core behind a host link, with an on-chip memory: a board for simulation, all but its memory chip."""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.core import MvuCore
from mvu.hdl.host_link import HostLink
from mvu.hdl.uart import UartRx, UartTx

__all__ = ["LinkSoc"]


class LinkSoc(wiring.Component):
    """:class:`MvuCore` and :class:`HostLink` over one UART, sharing ``memory_bytes`` of on-chip memory.

    The memory answers one read request at a time, a beat per cycle, the core's before the link's; writes
    take a cycle, the core's first. Addresses past the memory wrap around.

    Members:
        rx: ``In(1)``: the serial line from the host.
        tx: ``Out(1)``: the serial line to the host.
        busy: ``Out(1)``: the core's status, for a board's LEDs.
        done: ``Out(1)``.
        error: ``Out(1)``.
    """

    rx: In(1, init=1)
    tx: Out(1)
    busy: Out(1)
    done: Out(1)
    error: Out(1)

    def __init__(self, config: HardwareConfig, *, divisor: int, memory_bytes: int):
        self.config, self.divisor, self.memory_bytes = config, divisor, memory_bytes
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        B = self.config.mem_bytes
        lane_bits, index_bits = exact_log2(B), ceil_log2(self.memory_bytes // B)
        m.submodules.core = core = MvuCore(self.config)
        m.submodules.link = link = HostLink(B, self.memory_bytes)
        m.submodules.uart_rx = uart_rx = UartRx(self.divisor)
        m.submodules.uart_tx = uart_tx = UartTx(self.divisor)
        m.submodules.memory = memory = Memory(shape=8 * B, depth=self.memory_bytes // B, init=[])
        read, write = memory.read_port(), memory.write_port(granularity=8)

        m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx),
                     self.busy.eq(core.busy), self.done.eq(core.done), self.error.eq(core.error)]
        wiring.connect(m, uart_rx.data, link.rx)
        wiring.connect(m, link.tx, uart_tx.data)
        wiring.connect(m, link.csr, core.csr)

        # Reads: one request at a time, a beat per cycle; ``issued``: the read port answers next cycle.
        active, for_link, issued, issued_for_link = Signal(), Signal(), Signal(), Signal()
        address, left, read_id = Signal(32), Signal(16), Signal.like(core.mem.req.p.id)
        m.d.comb += [core.mem.req.ready.eq(~active), link.mem.req.ready.eq(~active & ~core.mem.req.valid)]
        with m.If(core.mem.req.valid & ~active):
            m.d.sync += [address.eq(core.mem.req.p.addr), left.eq(core.mem.req.p.len),
                         read_id.eq(core.mem.req.p.id), for_link.eq(0), active.eq(core.mem.req.p.len != 0)]
        with m.Elif(link.mem.req.valid & ~active):
            m.d.sync += [address.eq(link.mem.req.p.addr), left.eq(link.mem.req.p.len), for_link.eq(1),
                         active.eq(link.mem.req.p.len != 0)]
        m.d.comb += read.addr.eq(address[lane_bits:lane_bits + index_bits])
        m.d.sync += [issued.eq(active), issued_for_link.eq(for_link)]
        with m.If(active):
            m.d.sync += [address.eq(address + B), left.eq(left - 1), active.eq(left != 1)]
        m.d.comb += [
            core.mem.resp.valid.eq(issued & ~issued_for_link), core.mem.resp.p.data.eq(read.data),
            core.mem.resp.p.id.eq(read_id),
            link.mem.resp.valid.eq(issued & issued_for_link), link.mem.resp.payload.eq(read.data),
        ]

        # Writes: the core's whole beats first, then the link's masked ones.
        m.d.comb += [core.mem.write.ready.eq(1), link.mem.write.ready.eq(~core.mem.write.valid)]
        with m.If(core.mem.write.valid):
            m.d.comb += [write.addr.eq(core.mem.write.p.addr[lane_bits:lane_bits + index_bits]),
                         write.data.eq(core.mem.write.p.data), write.en.eq((1 << B) - 1)]
        with m.Else():
            m.d.comb += [write.addr.eq(link.mem.write.p.addr[lane_bits:lane_bits + index_bits]),
                         write.data.eq(link.mem.write.p.data),
                         write.en.eq(link.mem.write.p.mask & link.mem.write.valid.replicate(B))]
        return m
