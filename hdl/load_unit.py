"""The load unit: a DMA engine that copies strided rows of memory into the on-chip buffers."""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import Buffer, Opcode
from mvu.hdl.pipeline import instruction_field

__all__ = ["LoadUnit"]


class LoadUnit(wiring.Component):
    """Executes LOAD instructions one at a time.

    It issues one read request per buffer entry (``entry bytes / mem_bytes``
    beats each), writes the entries into the activation or weight buffer in
    arrival order, and reports the instruction done when the last entry is
    written. ``token_*`` are the compute->load (pop) and load->compute (push)
    dependency tokens.
    """

    def __init__(self, config: HardwareConfig):
        self.config = config
        P, R, C = config.mem_bytes, config.rows, config.cols
        super().__init__({
            "instr_valid": In(1), "instr": In(256), "instr_ready": Out(1),
            "token_avail": In(1), "token_pop": Out(1), "token_push": Out(1),
            "rd_req_valid": Out(1), "rd_req_ready": In(1), "rd_req_addr": Out(32), "rd_req_len": Out(16),
            "rd_resp_valid": In(1), "rd_resp_data": In(8 * P),
            "act_wr_en": Out(1), "act_wr_addr": Out(16), "act_wr_data": Out(8 * R),
            "wgt_wr_en": Out(1), "wgt_wr_addr": Out(16), "wgt_wr_data": Out(8 * C),
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

        word = self.instr
        field = lambda name: instruction_field(word, name, Opcode.LOAD)
        m.d.comb += [self.instr_ready.eq(~busy), self.idle.eq(~busy)]
        with m.If(self.instr_valid & ~busy):
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

        with m.If(busy & waiting):
            m.d.comb += [self.token_pop.eq(self.token_avail), self.stall_token.eq(~self.token_avail)]
            with m.If(self.token_avail):
                m.d.sync += waiting.eq(0)

        m.d.comb += [
            self.rd_req_valid.eq(busy & ~waiting & (requests_left != 0)),
            self.rd_req_addr.eq(req_addr),
            self.rd_req_len.eq(Mux(to_wgt, beats_wgt, beats_act)),
        ]
        with m.If(self.rd_req_valid & self.rd_req_ready):
            m.d.sync += [req_addr.eq(req_addr + stride), requests_left.eq(requests_left - 1)]

        # Entries arrive as whole beats, lowest bytes first.
        data = self.rd_resp_data
        if most_beats > 1:
            gathered = Signal(8 * P * (most_beats - 1))
            with m.If(self.rd_resp_valid):
                m.d.sync += gathered.eq(Cat(gathered[8 * P:], data))
            act_entry = Cat(gathered[8 * P * (most_beats - beats_act):], data)
            wgt_entry = Cat(gathered[8 * P * (most_beats - beats_wgt):], data)
        else:
            act_entry = wgt_entry = data
        last_beat = beat == Mux(to_wgt, beats_wgt - 1, beats_act - 1)
        entry_done = self.rd_resp_valid & last_beat
        with m.If(self.rd_resp_valid):
            m.d.sync += beat.eq(Mux(last_beat, 0, beat + 1))
        m.d.comb += [
            self.act_wr_en.eq(entry_done & ~to_wgt), self.act_wr_addr.eq(sram_addr),
            self.act_wr_data.eq(act_entry),
            self.wgt_wr_en.eq(entry_done & to_wgt), self.wgt_wr_addr.eq(sram_addr),
            self.wgt_wr_data.eq(wgt_entry),
        ]
        with m.If(entry_done):
            m.d.sync += [sram_addr.eq(sram_addr + 1), entries_left.eq(entries_left - 1)]
            with m.If(entries_left == 1):
                m.d.sync += busy.eq(0)
                m.d.comb += self.token_push.eq(notify)
        return m
