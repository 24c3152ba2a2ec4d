"""A 256-entry table of bytes, looked up by every lane of a row at once: an elementwise function of bytes."""

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.data import ArrayLayout
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mvu.hdl.contract.isa import TABLE_BYTES
from mvu.hdl.pipeline import idle_gated_domain

__all__ = ["LookupTable"]


class LookupTable(wiring.Component):
    """``lanes`` parallel lookups in one shared table of :data:`TABLE_BYTES` bytes, fixed latency :attr:`latency`.

    Ports:
        write_en: ``In(1)``: write ``write_data`` into the table this cycle.
        write_beat: ``In(range(256 // beat_bytes))``: which beat of the table ``write_data`` is: it becomes
            entries ``write_beat * beat_bytes`` .. ``+ beat_bytes - 1``, lowest byte first (a memory beat).
        write_data: ``In(8 * beat_bytes)``: the beat.
        in_valid: ``In(1)``: ``in_data`` holds a row (driven by a register: the Verilator model's clock gate
            samples it).
        in_data: ``In(ArrayLayout(unsigned(8), lanes))``: the bytes to look up.
        enable: ``In(1)``: look the row up (else pass it through unchanged); sampled with ``in_valid``.
        out_valid: ``Out(1)``: ``out_data`` holds the row that came in :attr:`latency` cycles earlier.
        out_data: ``Out(ArrayLayout(unsigned(8), lanes))``: ``table[in_data[lane]]``, or ``in_data`` unchanged.

    A row looked up in the cycle the table is written sees the old entries; write the table
    only while no row is in flight.
    """

    latency = 1

    def __init__(self, lanes: int, beat_bytes: int):
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, not {lanes}")
        if beat_bytes < 1 or TABLE_BYTES % beat_bytes or beat_bytes & (beat_bytes - 1):
            raise ValueError(f"beat_bytes must be a power of two up to {TABLE_BYTES}, not {beat_bytes}")
        self.lanes, self.beat_bytes = lanes, beat_bytes
        super().__init__({
            "write_en": In(1),
            "write_beat": In(range(TABLE_BYTES // beat_bytes)),
            "write_data": In(8 * beat_bytes),
            "in_valid": In(1),
            "in_data": In(ArrayLayout(unsigned(8), lanes)),
            "enable": In(1),
            "out_valid": Out(1),
            "out_data": Out(ArrayLayout(unsigned(8), lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        P = self.beat_bytes
        # A copy of the table per lane, stored as beats: one write port and one read port each (an FPGA's
        # distributed or block RAM). A lane reads the beat holding its entry, which a register of the entry's
        # place in the beat then selects. Beats are read only in cycles with a valid row, and the Verilator model
        # clocks the lookups only while a row is in them, so an idle table costs a simulator nothing.
        place_bits = (P - 1).bit_length()
        domain = idle_gated_domain(m, platform, lambda: self.in_valid | self.out_valid, "table_clock")
        passed = Signal(ArrayLayout(unsigned(8), self.lanes), reset_less=True)
        looked_up = Signal(reset_less=True)
        with m.If(self.in_valid):
            m.d[domain] += [passed.eq(self.in_data), looked_up.eq(self.enable)]
        m.d[domain] += self.out_valid.eq(self.in_valid)
        for lane in range(self.lanes):
            m.submodules[f"table_{lane}"] = table = Memory(shape=8 * P, depth=TABLE_BYTES // P, init=[])
            write, read = table.write_port(), table.read_port(domain=domain)
            m.d.comb += [write.en.eq(self.write_en), write.addr.eq(self.write_beat), write.data.eq(self.write_data),
                         read.en.eq(self.in_valid & self.enable), read.addr.eq(self.in_data[lane] >> place_bits)]
            place = passed[lane][:place_bits]
            m.d.comb += self.out_data[lane].eq(Mux(looked_up, read.data.word_select(place, 8), passed[lane]))
        return m
