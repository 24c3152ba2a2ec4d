"""The compute unit's preloader: takes COMPUTE instructions and shifts their weight tiles into the array."""

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import Opcode
from mvu.hdl.interfaces import COMPUTE_JOB, INSTRUCTIONS, Handoff, buffer_read, weight_rows
from mvu.hdl.pipeline import instruction_field

__all__ = ["Preloader"]


class Preloader(wiring.Component):
    """Takes a COMPUTE instruction, waits for its load token and, with ``preload``, shifts its tile in.

    The tile (``rows`` weight entries from ``wgt_addr``) is read last row
    first and shifted into one of the array's two shadow banks
    (``weights``), the banks taken in turn, once the tile that bank held
    last has swapped in everywhere: ``rows`` cycles after its first entry,
    which the streamer reports on ``handoff.swapped`` (swaps come in the
    order of the preloads). So one tile can be shifted in while the one
    before it waits to stream. The instruction then waits in a one-entry
    slot, offered on ``handoff.job`` with its bank, until the streamer takes
    it; meanwhile the preloader takes the next one.

    ``token_avail`` and ``token_pop`` are the ``avail`` and ``pop`` of the
    compute unit's tokens with the load unit. ``idle``: no instruction held;
    ``stall_token``: waiting for a load token; ``preloading``: between the
    token and the hand-off.
    """

    def __init__(self, config: HardwareConfig):
        self.config = config
        super().__init__({
            "instr": In(INSTRUCTIONS),
            "token_avail": In(1), "token_pop": Out(1),
            "wgt_read": Out(buffer_read(config.wgt_depth, 8 * config.cols)),
            "weights": Out(weight_rows(config.cols)),
            "handoff": Out(Handoff()),
            "idle": Out(1), "stall_token": Out(1), "preloading": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        R = self.config.rows
        job = self.handoff.job

        pre = Signal(COMPUTE_JOB)     # the instruction in hand
        slot = Signal(COMPUTE_JOB)    # handed over, until the streamer takes it
        slot_valid = Signal()
        m.d.comb += [job.payload.eq(slot), job.valid.eq(slot_valid)]
        with m.If(job.valid & job.ready):
            m.d.sync += slot_valid.eq(0)

        # A shadow bank may be refilled once the tile in it has swapped in everywhere: R cycles after the first
        # entry of its instruction entered. Banks fill in turn, and swap in the same order.
        fill_bank = Signal()          # the bank the next tile shifts into
        swap_bank = Signal()          # the bank the next swap takes
        bank_waiting = Signal(2)      # per bank: a preloaded tile has not started streaming yet
        bank_settling = [Signal(range(R), name=f"bank{bank}_settling") for bank in range(2)]

        word = self.instr.payload
        field = lambda name: instruction_field(word, name, Opcode.COMPUTE)
        wgt_addr = Signal(16)
        do_preload = Signal()
        wait_load = Signal()
        shift_index = Signal(range(R))
        shifting = Signal()
        m.d.sync += shifting.eq(0)
        m.d.comb += [
            self.weights.valid.eq(shifting),  # the weight read issued last cycle arrives now
            self.weights.payload.row.eq(self.wgt_read.data),
            self.weights.payload.bank.eq(pre.bank),
        ]
        with m.FSM(name="preloader") as fsm:
            with m.State("IDLE"):
                m.d.comb += self.instr.ready.eq(1)
                with m.If(self.instr.valid):
                    for name in ("act_addr", "count", "acc_addr", "act_zero_point", "accumulate", "maximum",
                                 "act_signed"):
                        m.d.sync += pre[name].eq(field(name))
                    m.d.sync += [
                        pre.wait_store.eq(instruction_field(word, "pop_next")),
                        pre.signal_load.eq(instruction_field(word, "push_prev")),
                        pre.signal_store.eq(instruction_field(word, "push_next")),
                        wait_load.eq(instruction_field(word, "pop_prev")),
                        wgt_addr.eq(field("wgt_addr")),
                        do_preload.eq(field("preload")),
                    ]
                    m.next = "TOKEN"
            with m.State("TOKEN"):
                with m.If(wait_load & ~self.token_avail):
                    m.d.comb += self.stall_token.eq(1)
                with m.Else():
                    m.d.comb += self.token_pop.eq(wait_load)
                    m.d.sync += [pre.swap.eq(do_preload), pre.bank.eq(fill_bank)]
                    with m.If(do_preload):
                        m.next = "SHADOW"
                    with m.Else():
                        m.next = "HANDOFF"
            with m.State("SHADOW"):
                free = Mux(fill_bank, ~bank_waiting[1] & (bank_settling[1] == 0),
                           ~bank_waiting[0] & (bank_settling[0] == 0))
                with m.If(free):
                    m.d.sync += shift_index.eq(0)
                    m.next = "SHIFT"
            with m.State("SHIFT"):
                # Read the tile's rows last-first; each enters the array a cycle later.
                m.d.comb += self.wgt_read.addr.eq(wgt_addr + (R - 1) - shift_index)
                m.d.sync += [shifting.eq(1), shift_index.eq(shift_index + 1)]
                with m.If(shift_index == R - 1):
                    m.next = "HANDOFF"
            with m.State("HANDOFF"):
                with m.If(~slot_valid):
                    m.d.sync += [slot.eq(pre), slot_valid.eq(1)]
                    with m.If(pre.swap):  # its last row is in the array: the next tile takes the other bank
                        m.d.sync += fill_bank.eq(~fill_bank)
                    m.next = "IDLE"

        handed = fsm.ongoing("HANDOFF") & ~slot_valid & pre.swap
        with m.If(self.handoff.swapped):
            m.d.sync += swap_bank.eq(~swap_bank)
        for bank in range(2):
            swapped = self.handoff.swapped & (swap_bank == bank)
            with m.If(handed & (pre.bank == bank)):
                m.d.sync += bank_waiting[bank].eq(1)
            with m.Elif(swapped):
                m.d.sync += bank_waiting[bank].eq(0)
            with m.If(swapped):
                m.d.sync += bank_settling[bank].eq(R - 1)
            with m.Elif(bank_settling[bank] != 0):
                m.d.sync += bank_settling[bank].eq(bank_settling[bank] - 1)
        m.d.comb += [
            self.idle.eq(fsm.ongoing("IDLE") & ~slot_valid),
            self.preloading.eq(~fsm.ongoing("IDLE") & ~fsm.ongoing("TOKEN")),
        ]
        return m
