"""The compute unit: weight preloading, activation streaming and accumulation."""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import Opcode
from mvu.hdl.matvec import MatrixVectorUnit
from mvu.hdl.pipeline import delayed, instruction_field

__all__ = ["ComputeUnit"]


class ComputeUnit(wiring.Component):
    """Executes COMPUTE instructions on the matrix-vector datapath.

    Two engines work on consecutive instructions at once. The *preloader*
    takes an instruction, waits for its load token, and (when ``preload`` is
    set) shifts its weight tile into the array's shadow registers as soon as
    the previous tile has swapped in. It then hands the instruction to the
    *streamer*, which waits for its store token and streams one activation
    entry per cycle into the array, the first of a preloaded tile flagged to
    swap the tile in; results are added into (or written to) the accumulators
    :attr:`MatrixVectorUnit.latency` + 1 cycles later. So the next tile's
    weights load while the current tile streams.
    """

    def __init__(self, config: HardwareConfig):
        self.config = config
        R, C = config.rows, config.cols
        super().__init__({
            "instr_valid": In(1), "instr": In(256), "instr_ready": Out(1),
            "load_token_avail": In(1), "load_token_pop": Out(1), "load_token_push": Out(1),
            "store_token_avail": In(1), "store_token_pop": Out(1), "store_token_push": Out(1),
            "act_rd_addr": Out(16), "act_rd_data": In(8 * R),
            "wgt_rd_addr": Out(16), "wgt_rd_data": In(8 * C),
            "acc_rd_addr": Out(16), "acc_rd_data": In(32 * C),
            "acc_wr_en": Out(1), "acc_wr_addr": Out(16), "acc_wr_data": Out(32 * C),
            "idle": Out(1), "active": Out(1), "stall_token": Out(1), "stall_weights": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        R, C = self.config.rows, self.config.cols
        m.submodules.matvec = matvec = MatrixVectorUnit(self.config)

        def job_signals(prefix):
            return {
                "act_addr": Signal(16, name=f"{prefix}_act_addr"),
                "count": Signal(16, name=f"{prefix}_count"),
                "acc_addr": Signal(16, name=f"{prefix}_acc_addr"),
                "accumulate": Signal(name=f"{prefix}_accumulate"),
                "act_signed": Signal(name=f"{prefix}_act_signed"),
                "act_zero_point": Signal(signed(16), name=f"{prefix}_act_zero_point"),
                "wait_store": Signal(name=f"{prefix}_wait_store"),
                "signal_load": Signal(name=f"{prefix}_signal_load"),
                "signal_store": Signal(name=f"{prefix}_signal_store"),
                "swap": Signal(name=f"{prefix}_swap"),
            }

        pre = job_signals("pre")          # instruction held by the preloader
        slot = job_signals("slot")        # handed over, waiting for the streamer
        slot_valid = Signal()
        stream = job_signals("stream")    # instruction being streamed
        stream_busy = Signal()
        stream_waiting = Signal()

        # --- Shadow tile bookkeeping ------------------------------------------------
        # The shadow registers may be refilled once the tile in them has swapped in
        # everywhere: R cycles after the first entry of its instruction entered.
        shadow_waiting = Signal()         # a preloaded tile has not started streaming yet
        swap_settling = Signal(range(R))

        # --- Preloader ---------------------------------------------------------
        word = self.instr
        field = lambda name: instruction_field(word, name, Opcode.COMPUTE)
        wgt_addr = Signal(16)
        do_preload = Signal()
        wait_load = Signal()
        shift_index = Signal(range(R))
        shifting = Signal()
        m.d.sync += shifting.eq(0)
        m.d.comb += [
            matvec.wl_valid.eq(shifting),  # the weight read issued last cycle arrives now
            matvec.wl_data.eq(self.wgt_rd_data),
        ]
        with m.FSM(name="preloader") as preloader:
            with m.State("IDLE"):
                m.d.comb += self.instr_ready.eq(1)
                with m.If(self.instr_valid):
                    for name in ("act_addr", "count", "acc_addr", "act_zero_point"):
                        m.d.sync += pre[name].eq(field(name))
                    m.d.sync += [
                        pre["accumulate"].eq(field("accumulate")),
                        pre["act_signed"].eq(field("act_signed")),
                        pre["wait_store"].eq(instruction_field(word, "pop_next")),
                        pre["signal_load"].eq(instruction_field(word, "push_prev")),
                        pre["signal_store"].eq(instruction_field(word, "push_next")),
                        wait_load.eq(instruction_field(word, "pop_prev")),
                        wgt_addr.eq(field("wgt_addr")),
                        do_preload.eq(field("preload")),
                    ]
                    m.next = "TOKEN"
            with m.State("TOKEN"):
                with m.If(wait_load & ~self.load_token_avail):
                    m.d.comb += self.stall_token.eq(1)
                with m.Else():
                    m.d.comb += self.load_token_pop.eq(wait_load)
                    m.d.sync += pre["swap"].eq(do_preload)
                    with m.If(do_preload):
                        m.next = "SHADOW"
                    with m.Else():
                        m.next = "HANDOFF"
            with m.State("SHADOW"):
                with m.If(~shadow_waiting & (swap_settling == 0)):
                    m.d.sync += shift_index.eq(0)
                    m.next = "SHIFT"
            with m.State("SHIFT"):
                # Read the tile's rows last-first; each enters the array a cycle later.
                m.d.comb += self.wgt_rd_addr.eq(wgt_addr + (R - 1) - shift_index)
                m.d.sync += [shifting.eq(1), shift_index.eq(shift_index + 1)]
                with m.If(shift_index == R - 1):
                    m.next = "HANDOFF"
            with m.State("HANDOFF"):
                with m.If(~slot_valid):
                    m.d.sync += [slot[name].eq(pre[name]) for name in slot]
                    m.d.sync += slot_valid.eq(1)
                    with m.If(pre["swap"]):
                        m.d.sync += shadow_waiting.eq(1)
                    m.next = "IDLE"

        # --- Streamer -----------------------------------------------------------
        issue = Signal()
        last = Signal()
        first = Signal()                  # the entry that swaps the preloaded tile in
        m.d.comb += [
            issue.eq(stream_busy & ~stream_waiting),
            last.eq(issue & (stream["count"] == 1)),
            first.eq(issue & stream["swap"]),
            self.act_rd_addr.eq(stream["act_addr"]),
            self.active.eq(issue),
        ]
        with m.If(stream_busy & stream_waiting):
            m.d.comb += self.store_token_pop.eq(self.store_token_avail)
            m.d.comb += self.stall_token.eq(~self.store_token_avail)
            with m.If(self.store_token_avail):
                m.d.sync += stream_waiting.eq(0)
        with m.If(issue):
            m.d.sync += [
                stream["act_addr"].eq(stream["act_addr"] + 1),
                stream["acc_addr"].eq(stream["acc_addr"] + 1),
                stream["count"].eq(stream["count"] - 1),
                stream["swap"].eq(0),
            ]
        with m.If(last):
            m.d.sync += stream_busy.eq(0)
            m.d.comb += self.load_token_push.eq(stream["signal_load"])
        with m.If(slot_valid & (~stream_busy | last)):
            m.d.sync += [stream[name].eq(slot[name]) for name in stream]
            m.d.sync += [stream_busy.eq(1), stream_waiting.eq(slot["wait_store"]), slot_valid.eq(0)]
        m.d.comb += self.stall_weights.eq(~stream_busy & ~slot_valid & ~preloader.ongoing("IDLE")
                                          & ~preloader.ongoing("TOKEN"))

        with m.If(first):
            m.d.sync += [shadow_waiting.eq(0), swap_settling.eq(R - 1)]
        with m.Elif(swap_settling != 0):
            m.d.sync += swap_settling.eq(swap_settling - 1)

        # --- Element pipeline: activation read, array, accumulate ---------------
        v1 = delayed(m, issue, 1, "elem_valid", reset=True)
        m.d.comb += [
            matvec.in_valid.eq(v1),
            matvec.in_data.eq(self.act_rd_data),
            matvec.in_signed.eq(delayed(m, stream["act_signed"], 1, "elem_signed")),
            matvec.in_zero_point.eq(delayed(m, stream["act_zero_point"], 1, "elem_zp")),
            matvec.in_first.eq(delayed(m, first, 1, "elem_first", reset=True)),
        ]
        # Metadata reaches the accumulator read one cycle before the array's result.
        lead = matvec.latency  # from issue to the accumulator read
        at_read = delayed(m, Cat(stream["acc_addr"], stream["accumulate"]), lead, "elem_meta")
        at_write = delayed(m, at_read, 1, "elem_meta_write")
        acc_addr, write_addr, accumulate = at_read[:16], at_write[:16], at_write[16]
        notify_store = delayed(m, last & stream["signal_store"], lead + 1, "elem_notify", reset=True)
        m.d.comb += self.acc_rd_addr.eq(acc_addr)
        for c in range(C):
            previous = self.acc_rd_data[32 * c:32 * (c + 1)].as_signed()
            result = matvec.out_data[c]
            m.d.comb += self.acc_wr_data[32 * c:32 * (c + 1)].eq(Mux(accumulate, previous + result, result))
        m.d.comb += [
            self.acc_wr_en.eq(matvec.out_valid),
            self.acc_wr_addr.eq(write_addr),
            self.store_token_push.eq(notify_store),
        ]

        in_flight = Signal(range(2 * (R + C + 8)))
        m.d.sync += in_flight.eq(in_flight + issue - matvec.out_valid)
        m.d.comb += self.idle.eq(preloader.ongoing("IDLE") & ~slot_valid & ~stream_busy & (in_flight == 0))
        return m
