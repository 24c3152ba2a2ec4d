"""The control and status registers and the performance counters."""

from amaranth import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.csr_map import COUNTERS, MAGIC, Csr, Status
from mvu.hdl.interfaces import CsrBus, RunControl

__all__ = ["ControlRegisters", "EVENTS"]

#: One bit per performance counter (:data:`mvu.hdl.contract.csr_map.COUNTERS`): what it counts this cycle.
EVENTS = data.StructLayout({name: 1 for name, _ in COUNTERS})


class ControlRegisters(wiring.Component):
    """The registers of :class:`~mvu.hdl.contract.csr_map.Csr` on ``bus``, for running programs on ``control``.

    ``PROG_ADDR`` and ``PROG_LEN`` take writes while no run is busy; writing
    bit 0 of ``CTRL`` starts one. Each counter clears when a run starts and
    adds its bit of ``events`` in every cycle the run is busy. Other
    addresses read as 0.
    """

    def __init__(self, config: HardwareConfig):
        self.config = config
        super().__init__({"bus": In(CsrBus()), "control": Out(RunControl()), "events": In(EVENTS)})

    def elaborate(self, platform):
        m = Module()
        bus, control = self.bus, self.control

        m.d.comb += control.start.eq(bus.we & (bus.addr == Csr.CTRL) & bus.wdata[0])
        with m.If(bus.we & ~control.busy):
            with m.Switch(bus.addr):
                with m.Case(Csr.PROG_ADDR):
                    m.d.sync += control.prog_addr.eq(bus.wdata)
                with m.Case(Csr.PROG_LEN):
                    m.d.sync += control.prog_len.eq(bus.wdata)

        registers = {
            Csr.MAGIC: MAGIC,
            Csr.CONFIG_FINGERPRINT: self.config.fingerprint,
            Csr.STATUS: control.busy * Status.BUSY | control.done * Status.DONE | control.error * Status.ERROR,
            Csr.ERROR_CODE: control.error_code,
            Csr.ERROR_PC: control.error_pc,
            Csr.PROG_ADDR: control.prog_addr,
            Csr.PROG_LEN: control.prog_len,
            Csr.RETIRED: control.retired,
        }
        for index, (name, _) in enumerate(COUNTERS):
            counter = Signal(64, name=f"counter_{name}")
            with m.If(control.starting):
                m.d.sync += counter.eq(0)
            with m.Elif(control.busy):
                m.d.sync += counter.eq(counter + self.events[name])
            registers[Csr.COUNTER_BASE + 2 * index] = counter[:32]
            registers[Csr.COUNTER_BASE + 2 * index + 1] = counter[32:]
        with m.Switch(bus.addr):
            for address, value in registers.items():
                with m.Case(address):
                    m.d.comb += bus.rdata.eq(value)
        return m
