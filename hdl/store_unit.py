"""The store unit: accumulators through the post-processor and out to memory."""

from amaranth import Cat, Const, DomainRenamer, Elaboratable, Module, Mux, Signal, Value, signed
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import TABLE_BYTES, Opcode
from mvu.hdl.contract.residual_add import ADD_BLOCK_BYTES
from mvu.hdl.interfaces import INSTRUCTIONS, MemoryReader, TokenPort, buffer_read, write_beat
from mvu.hdl.lookup_table import LookupTable
from mvu.hdl.pipeline import delayed, idle_gated_domain, instruction_field
from mvu.hdl.post_processor import PostProcessor
from mvu.hdl.residual_add import ResidualAdd

__all__ = ["StoreUnit"]

# Rows are read only while the FIFO has room for every row in flight (the accumulator read and the
# post-processor's, residual add's and lookup table's stages), so it holds those plus a few more to stream one row
# per cycle.
_ROW_FIFO_DEPTH = PostProcessor.latency + ResidualAdd.latency + LookupTable.latency + 4
# Addend rows are requested while this FIFO has room for them, so it covers the memory's latency too (a row a
# cycle needs as many rows in flight as the latency's cycles: 40 in the simulation's memory model; 16 rows held
# ResNet-50 to 0.4 rows a cycle in the STOREs that add).
_ADDEND_FIFO_DEPTH = 64


def _clocked(block: Elaboratable, domain: str) -> Elaboratable:
    """``block`` with its ``sync`` domain clocked by ``domain`` (itself for ``sync``)."""
    return block if domain == "sync" else DomainRenamer(domain)(block)


def _delayed_in(m: Module, domain: str, value: Value, cycles: int, name: str) -> Value:
    """:func:`~mvu.hdl.pipeline.delayed` with its registers in ``domain`` (a submodule unless ``sync``). As its own
    submodule the chain simulates about 5 % faster than as registers of ``domain`` in the store unit's module."""
    if domain == "sync":
        return delayed(m, value, cycles, name)
    chain = Module()
    value = delayed(chain, value, cycles, name)
    m.submodules[f"{name}_delay"] = _clocked(chain, domain)
    return value


class StoreUnit(wiring.Component):
    """Executes STORE instructions one at a time.

    With ``load_params`` it first reads the per-channel block (bias, multiplier, shift: ``cols`` int32 each) from
    memory, and with ``load_table`` then the 256-byte lookup table; with ``add`` the parameter block is followed
    by the add block. Only then does it wait for its token (``wait_compute``): none of that needs the accumulators,
    nor do the addend rows, which it starts requesting now, one request of ``cols`` bytes per row, while the
    addend FIFO has room. It reads one accumulator entry per cycle while its row FIFO has room (and, with ``add``,
    the entry's addend row has arrived), requantizes it (in fixed point or, with ``float32_scale``, float32
    arithmetic; or passes the int32 values through for ``raw``), with ``add`` adds the addend row
    (:class:`~mvu.hdl.residual_add.ResidualAdd`), with ``lookup`` replaces each byte by its entry in the table,
    and writes each row as whole memory beats to ``dram_addr + i * dram_stride``. ``prev_tokens`` are its tokens
    with the compute unit. ``idle``: no instruction in progress; ``stall_token``: waiting for a token;
    ``stall_memory``: a beat the memory did not take.
    """

    def __init__(self, config: HardwareConfig):
        self.config = config
        super().__init__({
            "instr": In(INSTRUCTIONS),
            "prev_tokens": Out(TokenPort()),
            "mem": Out(MemoryReader(config.mem_bytes)),
            "acc_read": Out(buffer_read(config.acc_depth, 32 * config.cols)),
            "write": Out(stream.Signature(write_beat(config.mem_bytes))),
            "idle": Out(1), "stall_token": Out(1), "stall_memory": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P, C = self.config.mem_bytes, self.config.cols
        param_beats = self.config.param_block_bytes // P
        m.submodules.ppu = ppu = PostProcessor(C, float32=self.config.float32_requant)
        m.submodules.table = table = LookupTable(C, P)
        table_beats = TABLE_BYTES // P
        rows = SyncFIFOBuffered(width=32 * C, depth=_ROW_FIFO_DEPTH)
        # The Verilator model clocks the row FIFO only while it holds a row or one arrives.
        rows_domain = idle_gated_domain(m, platform, lambda: table.out_valid | (rows.level != 0), "store_rows_clock")
        m.submodules.rows = _clocked(rows, rows_domain)
        residual_add = self.config.residual_add  # else the add's logic is left out, not just unused
        add_beats = ADD_BLOCK_BYTES // P if residual_add else 0

        word = self.instr.payload
        tokens = self.prev_tokens
        field = lambda name: instruction_field(word, name, Opcode.STORE)
        acc_addr = Signal(16)
        reads_left = Signal(17)
        writes_left = Signal(17)
        row_addr = Signal(32)
        stride = Signal(32)
        param_addr = Signal(32)
        load_params = Signal()
        raw = Signal()
        float32_scale = Signal()
        table_addr = Signal(32)
        load_table = Signal()
        lookup = Signal()
        add = Signal() if residual_add else Const(0, 1)
        add_block = Signal(8 * ADD_BLOCK_BYTES)
        table_beat = Signal(range(table_beats))
        waiting = Signal()
        notify = Signal()
        out_zero_point = Signal(signed(16))
        clamp_min = Signal(signed(16))
        clamp_max = Signal(signed(16))
        params = Signal(8 * self.config.param_block_bytes)
        param_beat = Signal(range(param_beats + add_beats + 1))
        # The Verilator model clocks the (wide) parameter and add blocks only while a parameter block arrives.
        receiving = Signal()
        param_domain = idle_gated_domain(m, platform, lambda: receiving, "store_param_clock")

        with m.FSM(name="store") as fsm:
            with m.State("IDLE"):
                m.d.comb += self.instr.ready.eq(1)
                with m.If(self.instr.valid):
                    m.d.sync += [
                        acc_addr.eq(field("acc_addr")),
                        reads_left.eq(field("count")),
                        writes_left.eq(field("count")),
                        row_addr.eq(field("dram_addr")),
                        stride.eq(field("dram_stride")),
                        param_addr.eq(field("param_addr")),
                        load_params.eq(field("load_params")),
                        raw.eq(field("raw")),
                        float32_scale.eq(field("float32_scale")),
                        table_addr.eq(field("table_addr")),
                        load_table.eq(field("load_table")),
                        lookup.eq(field("lookup")),
                        *([add.eq(field("add"))] if residual_add else []),
                        table_beat.eq(0),
                        out_zero_point.eq(field("out_zero_point")),
                        clamp_min.eq(field("clamp_min")),
                        clamp_max.eq(field("clamp_max")),
                        waiting.eq(instruction_field(word, "pop_prev")),
                        notify.eq(instruction_field(word, "push_prev")),
                        param_beat.eq(0),
                    ]
                    with m.If(field("load_params")):
                        m.next = "PARAM_REQUEST"
                    with m.Elif(field("load_table")):
                        m.next = "TABLE_REQUEST"
                    with m.Else():
                        m.next = "TOKEN"
            with m.State("PARAM_REQUEST"):
                m.d.comb += [
                    self.mem.req.valid.eq(1),
                    self.mem.req.p.addr.eq(param_addr),
                    self.mem.req.p.len.eq(param_beats + Mux(add, add_beats, 0)),
                ]
                with m.If(self.mem.req.ready):
                    m.next = "PARAM_RECEIVE"
            with m.State("PARAM_RECEIVE"):
                last_beat = param_beat == Mux(add, param_beats + add_beats, param_beats) - 1
                with m.If(self.mem.resp.valid):
                    m.d.sync += param_beat.eq(param_beat + 1)
                    with m.If(param_beat < param_beats):
                        m.d[param_domain] += params.eq(Cat(params[8 * P:], self.mem.resp.payload))
                    if residual_add:
                        with m.Else():
                            m.d[param_domain] += add_block.eq(Cat(add_block[8 * P:], self.mem.resp.payload))
                    with m.If(last_beat & load_table):
                        m.next = "TABLE_REQUEST"
                    with m.Elif(last_beat):
                        m.next = "TOKEN"
            with m.State("TABLE_REQUEST"):
                m.d.comb += [
                    self.mem.req.valid.eq(1),
                    self.mem.req.p.addr.eq(table_addr),
                    self.mem.req.p.len.eq(table_beats),
                ]
                with m.If(self.mem.req.ready):
                    m.next = "TABLE_RECEIVE"
            with m.State("TABLE_RECEIVE"):
                m.d.comb += [table.write_en.eq(self.mem.resp.valid), table.write_beat.eq(table_beat),
                             table.write_data.eq(self.mem.resp.payload)]
                with m.If(self.mem.resp.valid):
                    m.d.sync += table_beat.eq(table_beat + 1)
                    with m.If(table_beat == table_beats - 1):
                        m.next = "TOKEN"
            with m.State("TOKEN"):
                with m.If(waiting & ~tokens.avail):
                    m.d.comb += self.stall_token.eq(1)
                with m.Else():
                    m.d.comb += tokens.pop.eq(waiting)
                    m.next = "STREAM"
            with m.State("STREAM"):
                with m.If(writes_left == 0):
                    m.d.comb += tokens.push.eq(notify)
                    m.next = "IDLE"

        if param_domain != "sync":
            m.d.comb += receiving.eq(fsm.ongoing("PARAM_RECEIVE"))

        # Read one accumulator entry per cycle while the row FIFO has room for it (and, with add, an addend row
        # that no earlier entry claimed has arrived).
        in_flight = Signal(range(_ROW_FIFO_DEPTH + 1))
        issue = Signal()
        if residual_add:
            addend_ready, requantized = self._residual_add(m, platform, fsm, ppu, issue, add, add_block, stride)
        else:
            addend_ready, requantized = 1, (ppu.out_valid, ppu.out_data)
        m.d.comb += issue.eq(fsm.ongoing("STREAM") & (reads_left != 0)
                             & (in_flight + rows.level < _ROW_FIFO_DEPTH) & addend_ready)
        m.d.comb += self.acc_read.addr.eq(acc_addr)
        with m.If(issue):
            m.d.sync += [acc_addr.eq(acc_addr + 1), reads_left.eq(reads_left - 1)]
        m.d.sync += in_flight.eq(in_flight + issue - table.out_valid)
        # The raw accumulators travel beside the residual add and the table: clocked while a row is in flight.
        raw_domain = idle_gated_domain(m, platform, lambda: in_flight != 0, "store_raw_clock")

        for lane in range(C):
            m.d.comb += [
                ppu.in_acc[lane].eq(self.acc_read.data[32 * lane:32 * (lane + 1)]),
                ppu.bias[lane].eq(params[32 * lane:32 * (lane + 1)]),
                ppu.multiplier[lane].eq(params[32 * (C + lane):32 * (C + lane + 1)]),
                ppu.shift[lane].eq(params[32 * (2 * C + lane):32 * (2 * C + lane) + 6]),
            ]
        m.d.comb += [
            ppu.in_valid.eq(delayed(m, issue, 1, "read_valid", reset=True)),
            ppu.float32_scale.eq(float32_scale),
            ppu.out_zero_point.eq(out_zero_point),
            ppu.clamp_min.eq(clamp_min),
            ppu.clamp_max.eq(clamp_max),
            table.in_valid.eq(requantized[0]),
            table.in_data.eq(requantized[1]),
            table.enable.eq(lookup),
            rows.w_en.eq(table.out_valid),
            rows.w_data.eq(Mux(raw, _delayed_in(m, raw_domain, ppu.out_raw.as_value(),
                                                self._add_latency + LookupTable.latency, "raw"),
                               table.out_data.as_value())),
        ]

        # Write each row as whole beats.
        beat = Signal(range(4 * C // P))
        last_beat = beat == Mux(raw, 4 * C // P - 1, C // P - 1)
        write = self.write
        m.d.comb += [
            write.valid.eq(rows.r_rdy),
            write.p.addr.eq(row_addr + beat * P),
            write.p.data.eq(rows.r_data.word_select(beat, 8 * P)),
            self.stall_memory.eq(write.valid & ~write.ready),
        ]
        with m.If(write.valid & write.ready):
            m.d.sync += beat.eq(Mux(last_beat, 0, beat + 1))
            with m.If(last_beat):
                m.d.comb += rows.r_en.eq(1)
                m.d.sync += [row_addr.eq(row_addr + stride), writes_left.eq(writes_left - 1)]
        m.d.comb += self.idle.eq(fsm.ongoing("IDLE"))
        return m

    @property
    def _add_latency(self) -> int:
        return ResidualAdd.latency if self.config.residual_add else 0

    def _residual_add(self, m: Module, platform, fsm, ppu: PostProcessor, issue: Signal, add: Signal,
                      add_block: Signal, stride: Signal) -> tuple[Value, tuple[Value, Value]]:
        """The residual add after ``ppu``: requests each row's addend ahead while the addend FIFO has room for it
        and adds it to the requantized row. Returns whether an accumulator entry may be read (its addend row has
        arrived and no earlier entry claimed it, or no add) and the added rows (valid, data)."""
        P, C = self.config.mem_bytes, self.config.cols
        row_beats = C // P
        word = self.instr.payload
        field = lambda name: instruction_field(word, name, Opcode.STORE)
        m.submodules.residual = residual = ResidualAdd(C)
        addends = SyncFIFOBuffered(width=8 * C, depth=_ADDEND_FIFO_DEPTH)
        fetching = fsm.ongoing("TOKEN") | fsm.ongoing("STREAM")  # addends need no accumulator: ahead of the token
        # The Verilator model clocks the addend rows only while they are fetched or held (in TOKEN and STREAM
        # the only responses are addend rows).
        addend_domain = idle_gated_domain(m, platform, lambda: fetching & add | (addends.level != 0),
                                          "store_addend_clock")
        m.submodules.addends = _clocked(addends, addend_domain)
        addend_addr = Signal(32)
        addend_reqs_left = Signal(17)
        with m.If(fsm.ongoing("IDLE") & self.instr.valid):
            m.d.sync += [addend_addr.eq(field("dram_addr")), addend_reqs_left.eq(field("count"))]

        # Request each row's addend ahead while the addend FIFO has room for it.
        addend_offset = add_block[192:224].as_signed()
        requested = Signal(range(_ADDEND_FIFO_DEPTH + 1))  # rows requested, not all their beats arrived
        request = Signal()
        m.d.comb += request.eq(fetching & add & (addend_reqs_left != 0)
                               & (requested + addends.level < _ADDEND_FIFO_DEPTH))
        with m.If(request):
            m.d.comb += [self.mem.req.valid.eq(1), self.mem.req.p.addr.eq(addend_addr + addend_offset),
                         self.mem.req.p.len.eq(row_beats)]
        requested_now = request & self.mem.req.ready
        with m.If(requested_now):
            m.d.sync += [addend_addr.eq(addend_addr + stride), addend_reqs_left.eq(addend_reqs_left - 1)]
        addend_beat = Signal(range(row_beats))
        addend_row = Signal(8 * C)
        assembled = Cat(addend_row[8 * P:], self.mem.resp.payload)
        arrived = fetching & self.mem.resp.valid & (addend_beat == row_beats - 1)
        with m.If(fetching & self.mem.resp.valid):
            m.d[addend_domain] += [addend_row.eq(assembled),
                                   addend_beat.eq(Mux(addend_beat == row_beats - 1, 0, addend_beat + 1))]
        m.d.comb += [addends.w_en.eq(arrived), addends.w_data.eq(assembled)]
        m.d.sync += requested.eq(requested + requested_now - arrived)

        claimed = Signal(range(_ADDEND_FIFO_DEPTH + 1))  # addend rows of entries read, not yet added
        m.d.sync += claimed.eq(claimed + (issue & add) - addends.r_en)
        m.d.comb += [
            residual.in_valid.eq(ppu.out_valid),
            residual.in_data.eq(ppu.out_data),
            residual.addend.eq(addends.r_data),
            residual.enable.eq(add),
            addends.r_en.eq(ppu.out_valid & add),
            residual.ratio_q.eq(add_block[0:64]),
            residual.ratio_b.eq(add_block[64:128]),
            residual.start.eq(add_block[128:192]),
            residual.shift.eq(add_block[224:230]),
            residual.q_inner.eq(add_block[232]),
            residual.low.eq(add_block[240:248]),
            residual.high.eq(add_block[248:256]),
        ]
        return ~add | (addends.level > claimed), (residual.out_valid, residual.out_data)
