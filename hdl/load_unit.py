"""The load unit: a DMA engine that copies strided rows of memory into the on-chip buffers."""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import Buffer, Opcode
from mvu.hdl.interfaces import INSTRUCTIONS, MemoryReader, TokenPort, buffer_write
from mvu.hdl.pipeline import instruction_field

__all__ = ["LoadUnit"]


class LoadUnit(wiring.Component):
    """Executes LOAD instructions one at a time.

    It issues one read request per buffer entry (``entry bytes / mem_bytes``
    beats each), writes the entries into the activation or weight buffer in
    arrival order, and reports the instruction done when the last entry is
    written. ``next_tokens`` are its tokens with the compute unit. ``idle``:
    no instruction in progress; ``stall_token``: waiting for a token.
    """

    def __init__(self, config: HardwareConfig):
        self.config = config
        super().__init__({
            "instr": In(INSTRUCTIONS),
            "next_tokens": Out(TokenPort()),
            "mem": Out(MemoryReader(config.mem_bytes)),
            "act_write": Out(buffer_write(config.act_depth, 8 * config.rows)),
            "wgt_write": Out(buffer_write(config.wgt_depth, 8 * config.cols)),
            "idle": Out(1), "stall_token": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P, R, C = self.config.mem_bytes, self.config.rows, self.config.cols
        beats_act, beats_wgt = R // P, C // P
        most_beats = max(beats_act, beats_wgt)

        busy = Signal()
        waiting = Signal()
        to_wgt = Signal()
        notify = Signal()
        req_addr = Signal(32)
        stride = Signal(32)
        requests_left = Signal(17)
        entries_left = Signal(17)
        sram_addr = Signal(16)
        beat = Signal(range(most_beats))

        word = self.instr.payload
        field = lambda name: instruction_field(word, name, Opcode.LOAD)
        m.d.comb += [self.instr.ready.eq(~busy), self.idle.eq(~busy)]
        with m.If(self.instr.valid & ~busy):
            m.d.sync += [
                busy.eq(1),
                waiting.eq(instruction_field(word, "pop_next")),
                notify.eq(instruction_field(word, "push_next")),
                to_wgt.eq(field("buffer") == Buffer.WGT),
                req_addr.eq(field("dram_addr")),
                stride.eq(field("dram_stride")),
                requests_left.eq(field("count")),
                entries_left.eq(field("count")),
                sram_addr.eq(field("sram_addr")),
                beat.eq(0),
            ]

        tokens = self.next_tokens
        with m.If(busy & waiting):
            m.d.comb += [tokens.pop.eq(tokens.avail), self.stall_token.eq(~tokens.avail)]
            with m.If(tokens.avail):
                m.d.sync += waiting.eq(0)

        request = self.mem.req
        m.d.comb += [
            request.valid.eq(busy & ~waiting & (requests_left != 0)),
            request.p.addr.eq(req_addr),
            request.p.len.eq(Mux(to_wgt, beats_wgt, beats_act)),
        ]
        with m.If(request.valid & request.ready):
            m.d.sync += [req_addr.eq(req_addr + stride), requests_left.eq(requests_left - 1)]

        # Entries arrive as whole beats, lowest bytes first.
        response = self.mem.resp
        data = response.payload
        if most_beats > 1:
            gathered = Signal(8 * P * (most_beats - 1))
            with m.If(response.valid):
                m.d.sync += gathered.eq(Cat(gathered[8 * P:], data))
            act_entry = Cat(gathered[8 * P * (most_beats - beats_act):], data)
            wgt_entry = Cat(gathered[8 * P * (most_beats - beats_wgt):], data)
        else:
            act_entry = wgt_entry = data
        last_beat = beat == Mux(to_wgt, beats_wgt - 1, beats_act - 1)
        entry_done = response.valid & last_beat
        with m.If(response.valid):
            m.d.sync += beat.eq(Mux(last_beat, 0, beat + 1))
        m.d.comb += [
            self.act_write.en.eq(entry_done & ~to_wgt), self.act_write.addr.eq(sram_addr),
            self.act_write.data.eq(act_entry),
            self.wgt_write.en.eq(entry_done & to_wgt), self.wgt_write.addr.eq(sram_addr),
            self.wgt_write.data.eq(wgt_entry),
        ]
        with m.If(entry_done):
            m.d.sync += [sram_addr.eq(sram_addr + 1), entries_left.eq(entries_left - 1)]
            with m.If(entries_left == 1):
                m.d.sync += busy.eq(0)
                m.d.comb += tokens.push.eq(notify)
        return m
