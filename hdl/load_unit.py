"""The load unit: a DMA engine that copies strided rows of memory, or the windows of an implicit im2col, into the
on-chip buffers."""

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import Buffer, Opcode
from mvu.hdl.interfaces import INSTRUCTIONS, MemoryReader, TokenPort, buffer_write
from mvu.hdl.pipeline import instruction_field

__all__ = ["LoadUnit"]


def _times_stride(value: Value, stride: Value) -> Value:
    """``value * stride`` for a 4-bit window stride, as shifted adds (no multiplier)."""
    return sum(Mux(stride[bit], value << bit, 0) for bit in range(len(stride)))


class LoadUnit(wiring.Component):
    """Executes LOAD instructions one at a time.

    It issues one read request per buffer entry (``entry bytes / mem_bytes``
    beats each), writes the entries into the activation or weight buffer in
    arrival order, and reports the instruction done when the last entry is
    written. ``next_tokens`` are its tokens with the compute unit. ``idle``:
    no instruction in progress; ``stall_token``: waiting for a token.

    A ``window`` LOAD first spends two cycles turning its descriptor into a
    first address and per-step increments (the only multiplications: those by
    the 4-bit strides as shifted adds, three wider ones: 8 MULT18X18D and
    about 1,400 LUT4 more than plain LOADs need on ECP5 at the default
    configuration, Yosys on this unit alone); then
    counters walk the output pixels, one entry per cycle. An entry whose input
    pixel is outside the input reads nothing: its buffer address waits in a
    FIFO until a cycle in which no arriving entry is written, to be written as
    ``fill`` (the cycle its walk step left without a request frees such a
    slot a memory latency later). The others are requested, their buffer
    addresses kept in a FIFO until their beats come back. Each FIFO holds
    :data:`WINDOW_IN_FLIGHT` entries; the walk waits while one is full. A
    window entry into the activation buffer may start at any byte (a
    3-channel stem's tap rows): it is requested from its beat on, one beat
    longer when it does not start one, and cut from the beats that arrive by
    a byte shifter (``mem_bytes`` positions, ``rows`` bytes wide).
    """

    #: Window entries waiting at most, of each kind (requested and not yet arrived; outside the input and not
    #: yet written).
    WINDOW_IN_FLIGHT = 64

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
        offset_bits = (P - 1).bit_length()  # a byte's place in its beat

        busy = Signal()
        waiting = Signal()
        to_wgt = Signal()
        notify = Signal()
        req_addr = Signal(32)
        stride = Signal(32)
        requests_left = Signal(17)
        entries_left = Signal(17)
        sram_addr = Signal(16)
        beat = Signal(range(most_beats + 1))

        word = self.instr.payload
        field = lambda name: instruction_field(word, name, Opcode.LOAD)
        m.d.comb += [self.instr.ready.eq(~busy), self.idle.eq(~busy)]
        window = Signal()
        setup = Signal(2)  # window set-up cycles left
        descriptor = {name: Signal.like(field(name), name=f"window_{name}") for name in (
            "row_stride", "in_h", "in_w", "out_w", "start_y", "start_x", "stride_y", "stride_x", "offset_y",
            "offset_x", "fill")}
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
                window.eq(field("window")),
                setup.eq(Mux(field("window"), 2, 0)),
                *(register.eq(field(name)) for name, register in descriptor.items()),
            ]

        tokens = self.next_tokens
        with m.If(busy & waiting):
            m.d.comb += [tokens.pop.eq(tokens.avail), self.stall_token.eq(~tokens.avail)]
            with m.If(tokens.avail):
                m.d.sync += waiting.eq(0)

        # The window's walk: input pixel (iy, ix) of output column ``column``, its address in req_addr.
        d = descriptor
        iy, ix = Signal(signed(24)), Signal(signed(22))
        column = Signal(16)
        step_x, step_y, wrap = Signal(32), Signal(32), Signal(32)
        entry_addr = Signal(16)  # buffer address of the next window entry
        with m.If(setup == 2):
            m.d.sync += [
                iy.eq(_times_stride(d["start_y"], d["stride_y"]) + d["offset_y"]),
                ix.eq(_times_stride(d["start_x"], d["stride_x"]) + d["offset_x"]),
                column.eq(d["start_x"]),
                step_x.eq(_times_stride(stride, d["stride_x"])),
                step_y.eq(_times_stride(d["row_stride"], d["stride_y"])),
                entry_addr.eq(sram_addr),
            ]
        with m.If(setup == 1):
            m.d.sync += [
                req_addr.eq(req_addr + iy * d["row_stride"] + ix * stride),
                wrap.eq(step_y - (d["out_w"] - 1) * step_x),
            ]
        with m.If(setup != 0):
            m.d.sync += setup.eq(setup - 1)
        walking = busy & window & (setup == 0) & ~waiting & (requests_left != 0)
        inside = (iy >= 0) & (iy < d["in_h"]) & (ix >= 0) & (ix < d["in_w"])
        in_flight = m.submodules.in_flight = SyncFIFO(width=16 + offset_bits, depth=self.WINDOW_IN_FLIGHT)
        padding = m.submodules.padding = SyncFIFO(width=16, depth=self.WINDOW_IN_FLIGHT)

        # Only window entries into the activation buffer start between beats (check_program).
        offset = req_addr[:offset_bits]
        request = self.mem.req
        m.d.comb += [
            request.valid.eq(Mux(window, walking & inside & in_flight.w_rdy, busy & ~waiting & (requests_left != 0))),
            request.p.addr.eq(Cat(Const(0, offset_bits), req_addr[offset_bits:])),
            request.p.len.eq(Mux(to_wgt, beats_wgt, beats_act + (offset != 0))),
            in_flight.w_data.eq(Cat(entry_addr, offset)),
            in_flight.w_en.eq(window & request.valid & request.ready),
        ]
        with m.If(~window & request.valid & request.ready):
            m.d.sync += [req_addr.eq(req_addr + stride), requests_left.eq(requests_left - 1)]

        # Entries arrive as whole beats, lowest bytes first: the last beats (an activation entry's last one more)
        # gathered, newest on top.
        response = self.mem.resp
        data = response.payload
        kept = max(most_beats - 1, beats_act)
        gathered = Signal(8 * P * kept)
        with m.If(response.valid):
            m.d.sync += gathered.eq(Cat(gathered[8 * P:], data))
        wgt_entry = Cat(gathered[8 * P * (kept - beats_wgt + 1):], data)
        head_offset = Mux(window, in_flight.r_data[16:], 0)  # the arriving entry's first byte in its first beat
        longer = head_offset != 0
        spanned = Cat(gathered[8 * P * (kept - beats_act):], data)  # beats_act + 1 beats
        act_entry = (spanned >> Cat(Const(0, 3), Mux(longer, head_offset, P)))[:8 * R]
        last_beat = beat == Mux(to_wgt, beats_wgt - 1, beats_act - 1 + longer)
        entry_done = response.valid & last_beat
        with m.If(response.valid):
            m.d.sync += beat.eq(Mux(last_beat, 0, beat + 1))
        # A window entry outside the input is written later, in a cycle no arriving entry needs the port.
        m.d.comb += [padding.w_data.eq(entry_addr), padding.w_en.eq(walking & ~inside)]
        pad = padding.r_rdy & ~entry_done
        m.d.comb += padding.r_en.eq(pad)
        with m.If((window & request.valid & request.ready) | (padding.w_en & padding.w_rdy)):
            m.d.sync += [requests_left.eq(requests_left - 1), entry_addr.eq(entry_addr + 1)]
            with m.If(column == d["out_w"] - 1):
                m.d.sync += [column.eq(0), ix.eq(d["offset_x"]), iy.eq(iy + d["stride_y"]),
                             req_addr.eq(req_addr + wrap)]
            with m.Else():
                m.d.sync += [column.eq(column + 1), ix.eq(ix + d["stride_x"]), req_addr.eq(req_addr + step_x)]
        m.d.comb += in_flight.r_en.eq(window & entry_done)
        write_addr = Mux(pad, padding.r_data, Mux(window, in_flight.r_data[:16], sram_addr))
        written = entry_done | pad
        m.d.comb += [
            self.act_write.en.eq(written & ~to_wgt), self.act_write.addr.eq(write_addr),
            self.act_write.data.eq(Mux(pad, Cat(*[d["fill"]] * R), act_entry)),
            self.wgt_write.en.eq(written & to_wgt), self.wgt_write.addr.eq(write_addr),
            self.wgt_write.data.eq(Mux(pad, Cat(*[d["fill"]] * C), wgt_entry)),
        ]
        with m.If(entry_done):
            m.d.sync += sram_addr.eq(sram_addr + 1)
        with m.If(written):
            m.d.sync += entries_left.eq(entries_left - 1)
            with m.If(entries_left == 1):
                m.d.sync += busy.eq(0)
                m.d.comb += tokens.push.eq(notify)
        return m
