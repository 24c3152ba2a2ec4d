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
    """Executes LOAD instructions in order, the next one's requests while the last one's entries arrive.

    It issues one read request per buffer entry (``entry bytes / mem_bytes``
    beats each), writes the entries into the activation or weight buffer in
    arrival order, and reports an instruction done (its token on
    ``next_tokens``) when its last entry is written, in instruction order.
    Once a LOAD has issued its last request, the next one may start issuing
    while its entries still arrive, hiding the memory's latency, unless it
    writes entries of the same buffer that the open one writes: at most two
    LOADs are open. ``idle``: no LOAD open; ``stall_token``: waiting for a
    token. Each entry in flight carries its buffer, address and LOAD.

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
    :data:`WINDOW_IN_FLIGHT` entries; requests and the walk wait while one is
    full. A window entry into the activation buffer may start at any byte (a
    3-channel stem's tap rows): it is requested from its beat on, one beat
    longer when it does not start one, and cut from the beats that arrive by
    a byte shifter (``mem_bytes`` positions, ``rows`` bytes wide).
    """

    #: Entries waiting at most, of each kind (requested and not yet arrived; outside the input and not yet written).
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

        issuing = Signal()  # a LOAD is issuing its requests (or walking its window)
        waiting = Signal()
        to_wgt = Signal()
        req_addr = Signal(32)
        stride = Signal(32)
        requests_left = Signal(17)
        sram_addr = Signal(16)
        beat = Signal(range(most_beats + 1))

        # The LOADs open (issuing, or entries still to write): two slots taken in turn, retired in order.
        slot = Signal()  # the issuing LOAD's, or the next one's
        oldest = Signal()
        opened = Signal(2)
        left = [Signal(17, name=f"slot{index}_left") for index in range(2)]
        notify = Signal(2)
        # The last accepted LOAD's buffer and entries, which the next one may not write while it is open.
        last_wgt, last_first, last_end = Signal(), Signal(16), Signal(17)

        word = self.instr.payload
        field = lambda name: instruction_field(word, name, Opcode.LOAD)
        new_wgt = field("buffer") == Buffer.WGT
        new_first, new_end = field("sram_addr"), field("sram_addr") + field("count")
        clash = opened.bit_select(~slot, 1) & (new_wgt == last_wgt) & (new_first < last_end) & (last_first < new_end)
        accept = self.instr.valid & self.instr.ready
        m.d.comb += [self.instr.ready.eq(~issuing & ~opened.bit_select(slot, 1) & ~clash),
                     self.idle.eq(~issuing & (opened == 0))]
        window = Signal()
        setup = Signal(2)  # window set-up cycles left
        descriptor = {name: Signal.like(field(name), name=f"window_{name}") for name in (
            "row_stride", "in_h", "in_w", "out_w", "start_y", "start_x", "stride_y", "stride_x", "offset_y",
            "offset_x", "fill")}
        with m.If(accept):
            m.d.sync += [
                issuing.eq(1),
                waiting.eq(instruction_field(word, "pop_next")),
                to_wgt.eq(new_wgt),
                req_addr.eq(field("dram_addr")),
                stride.eq(field("dram_stride")),
                requests_left.eq(field("count")),
                sram_addr.eq(new_first),
                window.eq(field("window")),
                setup.eq(Mux(field("window"), 2, 0)),
                last_wgt.eq(new_wgt), last_first.eq(new_first), last_end.eq(new_end),
                *(register.eq(field(name)) for name, register in descriptor.items()),
            ]

        tokens = self.next_tokens
        with m.If(issuing & waiting):
            m.d.comb += [tokens.pop.eq(tokens.avail), self.stall_token.eq(~tokens.avail)]
            with m.If(tokens.avail):
                m.d.sync += waiting.eq(0)

        # The window's walk: input pixel (iy, ix) of output column ``column``, its address in req_addr.
        d = descriptor
        iy, ix = Signal(signed(24)), Signal(signed(22))
        column = Signal(16)
        step_x, step_y, wrap = Signal(32), Signal(32), Signal(32)
        with m.If(setup == 2):
            m.d.sync += [
                iy.eq(_times_stride(d["start_y"], d["stride_y"]) + d["offset_y"]),
                ix.eq(_times_stride(d["start_x"], d["stride_x"]) + d["offset_x"]),
                column.eq(d["start_x"]),
                step_x.eq(_times_stride(stride, d["stride_x"])),
                step_y.eq(_times_stride(d["row_stride"], d["stride_y"])),
            ]
        with m.If(setup == 1):
            m.d.sync += [
                req_addr.eq(req_addr + iy * d["row_stride"] + ix * stride),
                wrap.eq(step_y - (d["out_w"] - 1) * step_x),
            ]
        with m.If(setup != 0):
            m.d.sync += setup.eq(setup - 1)
        ready_to_issue = issuing & (setup == 0) & ~waiting & (requests_left != 0)
        walking = ready_to_issue & window
        inside = (iy >= 0) & (iy < d["in_h"]) & (ix >= 0) & (ix < d["in_w"])
        # Per entry: its buffer address, first byte in its first beat, buffer, LOAD.
        in_flight = m.submodules.in_flight = SyncFIFO(width=16 + offset_bits + 2, depth=self.WINDOW_IN_FLIGHT)
        padding = m.submodules.padding = SyncFIFO(width=16 + 8 + 2, depth=self.WINDOW_IN_FLIGHT)

        # Only window entries into the activation buffer start between beats (check_program).
        offset = Mux(window, req_addr[:offset_bits], 0)
        request = self.mem.req
        requested = request.valid & request.ready
        m.d.comb += [
            request.valid.eq(ready_to_issue & in_flight.w_rdy & (~window | inside)),
            request.p.addr.eq(Cat(Const(0, offset_bits), req_addr[offset_bits:])),
            request.p.len.eq(Mux(to_wgt, beats_wgt, beats_act + (offset != 0))),
            in_flight.w_data.eq(Cat(sram_addr, offset, to_wgt, slot)),
            in_flight.w_en.eq(requested),
            padding.w_data.eq(Cat(sram_addr, d["fill"], to_wgt, slot)),
            padding.w_en.eq(walking & ~inside),
        ]
        stepped = requested | (padding.w_en & padding.w_rdy)
        with m.If(stepped):
            m.d.sync += [requests_left.eq(requests_left - 1), sram_addr.eq(sram_addr + 1)]
            with m.If(requests_left == 1):  # its last entry is on its way: the next LOAD may start
                m.d.sync += [issuing.eq(0), slot.eq(~slot)]
        with m.If(stepped & ~window):
            m.d.sync += req_addr.eq(req_addr + stride)
        with m.If(stepped & window):
            with m.If(column == d["out_w"] - 1):
                m.d.sync += [column.eq(0), ix.eq(d["offset_x"]), iy.eq(iy + d["stride_y"]),
                             req_addr.eq(req_addr + wrap)]
            with m.Else():
                m.d.sync += [column.eq(column + 1), ix.eq(ix + d["stride_x"]), req_addr.eq(req_addr + step_x)]

        # Entries arrive as whole beats, lowest bytes first: the last beats (an activation entry's last one more)
        # gathered, newest on top.
        head = in_flight.r_data
        head_addr, head_offset = head[:16], head[16:16 + offset_bits]
        head_wgt, head_slot = head[16 + offset_bits], head[17 + offset_bits]
        response = self.mem.resp
        data = response.payload
        kept = max(most_beats - 1, beats_act)
        gathered = Signal(8 * P * kept)
        with m.If(response.valid):
            m.d.sync += gathered.eq(Cat(gathered[8 * P:], data))
        wgt_entry = Cat(gathered[8 * P * (kept - beats_wgt + 1):], data)
        longer = head_offset != 0
        spanned = Cat(gathered[8 * P * (kept - beats_act):], data)  # beats_act + 1 beats
        act_entry = (spanned >> Cat(Const(0, 3), Mux(longer, head_offset, P)))[:8 * R]
        last_beat = beat == Mux(head_wgt, beats_wgt - 1, beats_act - 1 + longer)
        entry_done = response.valid & last_beat
        with m.If(response.valid):
            m.d.sync += beat.eq(Mux(last_beat, 0, beat + 1))
        # An entry outside the input is written later, in a cycle no arriving entry needs the port.
        pad = padding.r_rdy & ~entry_done
        pad_addr, pad_fill = padding.r_data[:16], padding.r_data[16:24]
        pad_wgt, pad_slot = padding.r_data[24], padding.r_data[25]
        m.d.comb += [padding.r_en.eq(pad), in_flight.r_en.eq(entry_done)]
        written = entry_done | pad
        write_wgt, write_addr = Mux(pad, pad_wgt, head_wgt), Mux(pad, pad_addr, head_addr)
        write_slot = Mux(pad, pad_slot, head_slot)
        m.d.comb += [
            self.act_write.en.eq(written & ~write_wgt), self.act_write.addr.eq(write_addr),
            self.act_write.data.eq(Mux(pad, Cat(*[pad_fill] * R), act_entry)),
            self.wgt_write.en.eq(written & write_wgt), self.wgt_write.addr.eq(write_addr),
            self.wgt_write.data.eq(Mux(pad, Cat(*[pad_fill] * C), wgt_entry)),
        ]

        # Open and retire LOADs: the oldest retires (its token) in the cycle its last entry is written, or once
        # the one before it has retired.
        finishing = Signal()
        m.d.comb += finishing.eq(opened.bit_select(oldest, 1) & (
            (Mux(oldest, left[1], left[0]) == 0) | ((Mux(oldest, left[1], left[0]) == 1) & written
                                                    & (write_slot == oldest))))
        for index in range(2):
            with m.If(accept & (slot == index)):
                m.d.sync += [left[index].eq(field("count")), opened[index].eq(1),
                             notify[index].eq(instruction_field(word, "push_next"))]
            with m.Else():
                with m.If(written & (write_slot == index)):
                    m.d.sync += left[index].eq(left[index] - 1)
                with m.If(finishing & (oldest == index)):
                    m.d.sync += opened[index].eq(0)
        with m.If(finishing):
            m.d.sync += oldest.eq(~oldest)
            m.d.comb += tokens.push.eq(notify.bit_select(oldest, 1))
        return m
