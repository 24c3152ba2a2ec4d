"""The compute unit's streamer: activation entries into the array, results into the accumulators."""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.interfaces import (
    Handoff,
    TokenPort,
    activation_entries,
    buffer_read,
    buffer_write,
    dot_products,
)
from mvu.hdl.pipeline import delayed

__all__ = ["Streamer"]


class Streamer(wiring.Component):
    """Streams the COMPUTE instructions the preloader hands over through the array, one entry per cycle.

    An instruction first waits for its store token (``next_tokens``, the
    compute unit's tokens with the store unit). Each cycle then reads one
    activation entry, which enters the array (``acts``) a cycle later, the
    first of a preloaded tile flagged to swap the tile in from its shadow bank; its dot products
    (``sums``) are added into, or written to, their accumulator entry, or with
    ``maximum`` (built with the configuration's ``max_pool``) the larger of
    each sum and the entry's value is kept. The
    accumulator read port must return an entry written in the same cycle
    (transparent), as consecutive instructions may accumulate into it.
    ``array_latency`` is the cycles from ``acts`` to ``sums``.

    After an instruction's last entry it gives the load unit its token
    (``prev_push``) at once, and the store unit its token once the last result
    is written. ``idle``: nothing held or in flight; ``starved``: no
    instruction in hand or offered; ``active``: an entry issued this cycle;
    ``waiting``: the instruction in hand waits for a store token.
    """

    def __init__(self, config: HardwareConfig, array_latency: int):
        self.config, self.array_latency = config, array_latency
        R, C = config.rows, config.cols
        super().__init__({
            "handoff": In(Handoff()),
            "next_tokens": Out(TokenPort()), "prev_push": Out(1),
            "act_read": Out(buffer_read(config.act_depth, 8 * R)),
            "acc_read": Out(buffer_read(config.acc_depth, 32 * C)),
            "acc_write": Out(buffer_write(config.acc_depth, 32 * C)),
            "acts": Out(activation_entries(R)),
            "sums": In(dot_products(C)),
            "idle": Out(1), "starved": Out(1), "active": Out(1), "waiting": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        R, C = self.config.rows, self.config.cols
        job = self.handoff.job
        tokens = self.next_tokens

        act_addr = Signal(16)
        count = Signal(16)
        acc_addr = Signal(16)
        accumulate = Signal()
        maximum = Signal()  # with max_pool only: else the comparators are left out, not just unused
        act_signed = Signal()
        act_zero_point = Signal(signed(16))
        signal_load = Signal()
        signal_store = Signal()
        swap = Signal()
        bank = Signal()  # the shadow bank the swap takes
        busy = Signal()
        waiting = Signal()

        issue = Signal()
        last = Signal()
        first = Signal()  # the entry that swaps the preloaded tile in
        m.d.comb += [
            issue.eq(busy & ~waiting),
            last.eq(issue & (count == 1)),
            first.eq(issue & swap),
            self.act_read.addr.eq(act_addr),
            self.active.eq(issue),
            self.waiting.eq(busy & waiting),
            self.handoff.swapped.eq(first),
        ]
        with m.If(busy & waiting):
            m.d.comb += tokens.pop.eq(tokens.avail)
            with m.If(tokens.avail):
                m.d.sync += waiting.eq(0)
        with m.If(issue):
            m.d.sync += [act_addr.eq(act_addr + 1), acc_addr.eq(acc_addr + 1), count.eq(count - 1), swap.eq(0)]
        with m.If(last):
            m.d.sync += busy.eq(0)
            m.d.comb += self.prev_push.eq(signal_load)
        m.d.comb += job.ready.eq(~busy | last)
        with m.If(job.valid & job.ready):
            taken = job.payload
            m.d.sync += [
                act_addr.eq(taken.act_addr), count.eq(taken.count), acc_addr.eq(taken.acc_addr),
                accumulate.eq(taken.accumulate), act_signed.eq(taken.act_signed),
                act_zero_point.eq(taken.act_zero_point), signal_load.eq(taken.signal_load),
                signal_store.eq(taken.signal_store), swap.eq(taken.swap), bank.eq(taken.bank),
                busy.eq(1), waiting.eq(taken.wait_store),
            ]
            if self.config.max_pool:
                m.d.sync += maximum.eq(taken.maximum)
        m.d.comb += self.starved.eq(~busy & ~job.valid)

        # Element pipeline: activation read, array, accumulate.
        m.d.comb += [
            self.acts.valid.eq(delayed(m, issue, 1, "elem_valid", reset=True)),
            self.acts.p.data.eq(self.act_read.data),
            self.acts.p.signed.eq(delayed(m, act_signed, 1, "elem_signed")),
            self.acts.p.zero_point.eq(delayed(m, act_zero_point, 1, "elem_zp")),
            self.acts.p.first.eq(delayed(m, first, 1, "elem_first", reset=True)),
            self.acts.p.bank.eq(delayed(m, bank, 1, "elem_bank")),
        ]
        # Metadata reaches the accumulator read one cycle before the array's result.
        lead = self.array_latency  # from issue to the accumulator read
        meta = Cat(acc_addr, accumulate, maximum) if self.config.max_pool else Cat(acc_addr, accumulate)
        at_read = delayed(m, meta, lead, "elem_meta")
        at_write = delayed(m, at_read, 1, "elem_meta_write")
        notify_store = delayed(m, last & signal_store, lead + 1, "elem_notify", reset=True)
        m.d.comb += self.acc_read.addr.eq(at_read[:16])
        for c in range(C):
            previous = self.acc_read.data[32 * c:32 * (c + 1)].as_signed()
            result = self.sums.payload[c]
            combined = previous + result
            if self.config.max_pool:
                combined = Mux(at_write[17], Mux(previous > result, previous, result), combined)
            m.d.comb += self.acc_write.data[32 * c:32 * (c + 1)].eq(Mux(at_write[16], combined, result))
        m.d.comb += [
            self.acc_write.en.eq(self.sums.valid),
            self.acc_write.addr.eq(at_write[:16]),
            tokens.push.eq(notify_store),
        ]

        in_flight = Signal(range(2 * (R + C + 8)))
        m.d.sync += in_flight.eq(in_flight + issue - self.sums.valid)
        m.d.comb += self.idle.eq(~busy & (in_flight == 0))
        return m
