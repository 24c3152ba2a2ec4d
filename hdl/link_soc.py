"""The core behind a host link, on one memory: a board, all but its clock and pins."""

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.core import MvuCore
from mvu.hdl.host_link import HostLink
from mvu.hdl.interfaces import MEMORY_PORT_MEMBERS
from mvu.hdl.memory_arbiter import MemoryArbiter
from mvu.hdl.uart import UartRx, UartTx

__all__ = ["LinkSoc"]


class LinkSoc(wiring.Component):
    """:class:`MvuCore` and :class:`HostLink` over one UART, sharing ``memory`` through a
    :class:`~mvu.hdl.memory_arbiter.MemoryArbiter` (the core first).

    ``memory`` is a component with a flipped :class:`~mvu.hdl.interfaces.MemoryPort` (``req``, ``resp``,
    ``write``; tags of :data:`~mvu.hdl.memory_arbiter.ID_BITS`) and ``memory_bytes``, the bytes the host link
    reaches: a :class:`~mvu.hdl.block_ram_memory.BlockRamMemory` or an
    :class:`~mvu.hdl.sdram_controller.SdramController`. Its other members become the SoC's, wired straight
    through (the controller's ``sdram`` pins and ``ready``).

    Members:
        rx: ``In(1)``: the serial line from the host.
        tx: ``Out(1)``: the serial line to the host.
        busy: ``Out(1)``: the core's status, for a board's LEDs.
        done: ``Out(1)``.
        error: ``Out(1)``.
        (the memory's other members)
    """

    def __init__(self, config: HardwareConfig, *, divisor: int, memory: wiring.Component):
        self.config, self.divisor, self.memory = config, divisor, memory
        self._passed = {name: member for name, member in memory.signature.members.items()
                        if name not in MEMORY_PORT_MEMBERS}
        super().__init__({"rx": In(1, init=1), "tx": Out(1), "busy": Out(1), "done": Out(1), "error": Out(1),
                          **self._passed})

    def elaborate(self, platform):
        m = Module()
        B = self.config.mem_bytes
        m.submodules.core = core = MvuCore(self.config)
        m.submodules.link = link = HostLink(B, self.memory.memory_bytes)
        m.submodules.uart_rx = uart_rx = UartRx(self.divisor)
        m.submodules.uart_tx = uart_tx = UartTx(self.divisor)
        m.submodules.arbiter = arbiter = MemoryArbiter(B)
        m.submodules.memory = memory = self.memory

        m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx),
                     self.busy.eq(core.busy), self.done.eq(core.done), self.error.eq(core.error)]
        wiring.connect(m, uart_rx.data, link.rx)
        wiring.connect(m, link.tx, uart_tx.data)
        wiring.connect(m, link.csr, core.csr)
        wiring.connect(m, core.mem, arbiter.core)
        wiring.connect(m, link.mem, arbiter.link)
        for name in MEMORY_PORT_MEMBERS:
            wiring.connect(m, getattr(arbiter.port, name), getattr(memory, name))

        # The memory's other members, as the SoC's own.
        theirs, ours = ([(path, member, value) for path, member, value in signature.flatten(owner)
                         if path[0] in self._passed] for signature, owner in ((memory.signature, memory), (self.signature, self)))
        for (_, member, inner), (_, _, outer) in zip(theirs, ours, strict=True):
            m.d.comb += outer.eq(inner) if member.flow == wiring.Out else inner.eq(outer)
        return m
