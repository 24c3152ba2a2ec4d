"""A board's top level: its clock (through a PLL where the preset's clock is not the oscillator's),
:class:`~mvu.hdl.link_soc.LinkSoc` on the FTDI UART's pins with the board's memory (its SDRAM, else block
RAM), and the core's status on LEDs."""

from __future__ import annotations

from amaranth import ClockDomain, ClockSignal, Const, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

from mvu.hdl.block_ram_memory import BlockRamMemory
from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.link_soc import LinkSoc
from mvu.hdl.memory_arbiter import ID_BITS
from mvu.hdl.sdram_controller import SdramController
from mvu.hdl.uart import baud_divisor

__all__ = ["BoardTop", "ecp5_pll_dividers", "board_sdram"]

# The ECP5 PLL's limits (MHz): phase detector input and VCO.
_PFD_MHZ, _VCO_MHZ = (3.125, 400.0), (400.0, 800.0)


def ecp5_pll_dividers(input_mhz: float, output_mhz: float) -> dict[str, int]:
    """CLKI_DIV, CLKFB_DIV and CLKOP_DIV of an EHXPLLL (feedback from CLKOP) that turn ``input_mhz``
    into exactly ``output_mhz``; ValueError when no setting does."""
    for clki in range(1, 129):
        pfd = input_mhz / clki
        if not _PFD_MHZ[0] <= pfd <= _PFD_MHZ[1]:
            continue
        for clkfb in range(1, 81):
            if abs(pfd * clkfb - output_mhz) > 1e-9:
                continue
            dividers = [clkop for clkop in range(1, 129) if _VCO_MHZ[0] <= output_mhz * clkop <= _VCO_MHZ[1]]
            if dividers:  # the VCO nearest the middle of its range
                clkop = min(dividers, key=lambda d: abs(output_mhz * d - sum(_VCO_MHZ) / 2))
                return {"CLKI_DIV": clki, "CLKFB_DIV": clkfb, "CLKOP_DIV": clkop}
    raise ValueError(f"the ECP5 PLL cannot make exactly {output_mhz:g} MHz from {input_mhz:g} MHz")


def board_sdram(config: HardwareConfig) -> SdramController:
    """The ULX3S's SDRAM controller as its top wires it: the core's beat, the configuration's clock, the 32 MB
    chip with the default timing, clocked by the inverted clock (``read_delay=-1``, docs/boards.md)."""
    return SdramController(config.mem_bytes, config.clock_mhz * 1e6, read_delay=-1)


def _ecp5_pll(m: Module, clock_in: Signal, input_mhz: float, output_mhz: float) -> Signal:
    """An EHXPLLL driving the ``sync`` domain's clock; returns its lock signal."""
    dividers = ecp5_pll_dividers(input_mhz, output_mhz)
    locked = Signal()
    m.submodules.pll = Instance(
        "EHXPLLL",
        a_FREQUENCY_PIN_CLKI=f"{input_mhz:g}", a_FREQUENCY_PIN_CLKOP=f"{output_mhz:g}",
        a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
        p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
        p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
        p_CLKI_DIV=dividers["CLKI_DIV"], p_CLKFB_DIV=dividers["CLKFB_DIV"], p_CLKOP_DIV=dividers["CLKOP_DIV"],
        p_CLKOP_CPHASE=(dividers["CLKOP_DIV"] - 1) // 2, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
        i_RST=Const(0), i_STDBY=Const(0), i_CLKI=clock_in, o_CLKOP=ClockSignal("sync"),
        i_CLKFB=ClockSignal("sync"), i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(1),
        i_PHASESTEP=Const(1), i_PHASELOADREG=Const(1), i_PLLWAKESYNC=Const(0), i_ENCLKOP=Const(0),
        o_LOCK=locked)
    return locked


class BoardTop(Elaboratable):
    """:class:`LinkSoc` of ``config`` on a board's platform, with the board's memory.

    ``memory`` is ``"sdram"``: the platform's ``sdram`` resource (the ULX3S: :func:`board_sdram` on its pins,
    the chip clocked by the inverted ``sync`` clock; ``memory_bytes`` must be the chip's capacity), or
    ``"bram"``: ``memory_bytes`` of block RAM. ``sync`` runs at
    ``config.clock_mhz``: from an ECP5 PLL when that differs from ``oscillator_mhz`` (held in reset until the
    PLL locks), else the platform's own clock. The UART runs at ``baud``; ``leds`` name the platform's LED
    resource for each of busy, done and error (missing ones stay dark).
    """

    def __init__(self, config: HardwareConfig, *, oscillator_mhz: float, memory: str, memory_bytes: int, baud: int,
                 leds: dict[str, tuple[str, int]]):
        if memory not in ("bram", "sdram"):
            raise ValueError(f"a board's memory is one of bram, sdram, not {memory!r}")
        self.config, self.oscillator_mhz, self.memory, self.memory_bytes = config, oscillator_mhz, memory, memory_bytes
        self.baud, self.leds = baud, leds

    def elaborate(self, platform):
        m = Module()
        if self.config.clock_mhz != self.oscillator_mhz:
            clock = platform.request(platform.default_clk, dir="-")
            m.domains.sync = ClockDomain()
            m.submodules.clock_in = buffer = io.Buffer("i", clock)
            locked = _ecp5_pll(m, buffer.i, self.oscillator_mhz, self.config.clock_mhz)
            m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")
        divisor = baud_divisor(self.config.clock_mhz * 1e6, self.baud)
        sdram = self.memory == "sdram"
        if sdram and ("sdram", 0) not in platform.resources:
            raise ValueError(f"the {type(platform).__name__} has no SDRAM")
        memory = board_sdram(self.config) if sdram else BlockRamMemory(self.config.mem_bytes, self.memory_bytes,
                                                                       id_bits=ID_BITS)
        if memory.memory_bytes != self.memory_bytes:
            raise ValueError(f"the {type(platform).__name__}'s SDRAM holds {memory.memory_bytes} bytes: its "
                             f"memory_bytes must be that, not {self.memory_bytes}")
        m.submodules.soc = soc = LinkSoc(self.config, divisor=divisor, memory=memory)
        if sdram:
            _connect_sdram(m, platform, soc.sdram)
        uart = platform.request("uart", 0)
        m.d.comb += [soc.rx.eq(uart.rx.i), uart.tx.o.eq(soc.tx)]
        for status, (resource, number) in self.leds.items():
            m.d.comb += platform.request(resource, number).o.eq(getattr(soc, status))
        return m


def _connect_sdram(m: Module, platform, controller) -> None:
    """The controller's ``SdramPins`` on the platform's ``sdram`` resource, ``dq`` through a bidirectional
    buffer; the chip's clock is the inverted ``sync`` clock (:func:`board_sdram`'s ``read_delay=-1``)."""
    pins = platform.request("sdram", 0, dir={"dq": "-", "clk": "-"})
    m.submodules.sdram_dq = dq = io.Buffer("io", pins.dq)
    # The inverted clock from a DDR output register (ODDRX1F): low after each rising edge, high after each falling
    # one. Inverting the global clock in a LUT left router2 with an overused wire it never resolved.
    m.submodules.sdram_clk = chip_clock = io.DDRBuffer("o", pins.clk)
    m.d.comb += [chip_clock.o[0].eq(0), chip_clock.o[1].eq(1), pins.clk_en.o.eq(controller.clk_en), pins.cs.o.eq(controller.cs),
                 pins.ras.o.eq(controller.ras), pins.cas.o.eq(controller.cas), pins.we.o.eq(controller.we),
                 pins.ba.o.eq(controller.ba), pins.a.o.eq(controller.a), pins.dqm.o.eq(controller.dqm),
                 dq.o.eq(controller.dq_o), dq.oe.eq(controller.dq_oe), controller.dq_i.eq(dq.i)]
