"""The command processor: fetches the instruction stream and dispatches it to the units."""

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from mvu.hdl.contract.config import INSTRUCTION_BYTES, HardwareConfig
from mvu.hdl.contract.csr_map import ErrorCode
from mvu.hdl.contract.isa import Opcode
from mvu.hdl.pipeline import instruction_field

__all__ = ["CommandProcessor"]

_FETCH_DEPTH = 4
# Cycles after a dispatch before an empty queue can be trusted (FIFO latency).
_SETTLE_CYCLES = 4


class CommandProcessor(wiring.Component):
    """Fetches ``prog_len`` instructions from ``prog_addr`` after ``start``.

    A ``start`` takes effect once the previous run has settled: its fetches
    drained and ``units_idle`` (``starting`` marks that cycle; ``busy`` covers
    the wait). LOAD, COMPUTE and STORE go in order to their unit's queue; SYNC waits for
    ``units_idle``; FINISH waits likewise and then raises ``done``. An unknown
    opcode, or running out of instructions before FINISH, stops with
    ``error`` and records the code and the instruction's index.
    """

    def __init__(self, config: HardwareConfig):
        self.config = config
        P = config.mem_bytes
        super().__init__({
            "start": In(1), "prog_addr": In(32), "prog_len": In(32),
            "rd_req_valid": Out(1), "rd_req_ready": In(1), "rd_req_addr": Out(32), "rd_req_len": Out(16),
            "rd_resp_valid": In(1), "rd_resp_data": In(8 * P),
            "instr": Out(256),
            "load_valid": Out(1), "load_ready": In(1),
            "compute_valid": Out(1), "compute_ready": In(1),
            "store_valid": Out(1), "store_ready": In(1),
            "units_idle": In(1),
            "busy": Out(1), "starting": Out(1), "done": Out(1), "error": Out(1),
            "error_code": Out(4), "error_pc": Out(32), "retired": Out(32), "dispatch_stall": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P = self.config.mem_bytes
        beats = INSTRUCTION_BYTES // P
        m.submodules.fetched = fetched = SyncFIFOBuffered(width=256, depth=_FETCH_DEPTH)

        running = Signal()
        fetch_index = Signal(32)
        outstanding = Signal(range(_FETCH_DEPTH + 1))
        beat = Signal(range(beats))
        settle = Signal(range(_SETTLE_CYCLES + 1))

        pending = Signal()
        m.d.comb += self.busy.eq(running | pending)
        with m.If(self.start & ~self.busy):
            m.d.sync += [pending.eq(1), self.done.eq(0), self.error.eq(0), self.error_code.eq(ErrorCode.NONE),
                         self.retired.eq(0)]
        # Words still arriving for a stopped run must not become the next run's instructions.
        m.d.comb += self.starting.eq(pending & (outstanding == 0) & (fetched.level == 0) & self.units_idle)
        with m.If(self.starting):
            m.d.sync += [pending.eq(0), running.eq(1), fetch_index.eq(0), beat.eq(0)]

        # Fetch: keep the FIFO topped up, never past the end of the program.
        room = fetched.level + outstanding < _FETCH_DEPTH
        m.d.comb += [
            self.rd_req_valid.eq(running & (fetch_index < self.prog_len) & room),
            self.rd_req_addr.eq(self.prog_addr + fetch_index * INSTRUCTION_BYTES),
            self.rd_req_len.eq(beats),
        ]
        request = self.rd_req_valid & self.rd_req_ready
        with m.If(request):
            m.d.sync += fetch_index.eq(fetch_index + 1)
        if beats > 1:
            gathered = Signal(8 * P * (beats - 1))
            with m.If(self.rd_resp_valid):
                m.d.sync += gathered.eq(Cat(gathered[8 * P:], self.rd_resp_data))
            assembled = Cat(gathered, self.rd_resp_data)
        else:
            assembled = self.rd_resp_data
        arrived = self.rd_resp_valid & (beat == beats - 1)
        with m.If(self.rd_resp_valid):
            m.d.sync += beat.eq(beat + 1)  # wraps: beats is a power of two
        m.d.comb += [fetched.w_en.eq(arrived), fetched.w_data.eq(assembled)]
        m.d.sync += outstanding.eq(outstanding + request - arrived)

        # Dispatch.
        head = fetched.r_data
        opcode = instruction_field(head, "opcode")
        m.d.comb += self.instr.eq(head)
        have = running & fetched.r_rdy
        take = Signal()
        quiet = self.units_idle & (settle == 0)
        with m.If(settle != 0):
            m.d.sync += settle.eq(settle - 1)
        with m.If(have):
            with m.Switch(opcode):
                for code, valid, ready in ((Opcode.LOAD, self.load_valid, self.load_ready),
                                           (Opcode.COMPUTE, self.compute_valid, self.compute_ready),
                                           (Opcode.STORE, self.store_valid, self.store_ready)):
                    with m.Case(code):
                        m.d.comb += [valid.eq(1), take.eq(ready), self.dispatch_stall.eq(~ready)]
                        with m.If(ready):
                            m.d.sync += settle.eq(_SETTLE_CYCLES)
                with m.Case(Opcode.SYNC):
                    m.d.comb += take.eq(quiet)
                with m.Case(Opcode.FINISH):
                    m.d.comb += take.eq(quiet)
                    with m.If(quiet):
                        m.d.sync += [running.eq(0), self.done.eq(1)]
                with m.Default():
                    m.d.sync += [running.eq(0), self.error.eq(1), self.error_code.eq(ErrorCode.ILLEGAL_OPCODE),
                                 self.error_pc.eq(self.retired)]
        with m.Elif(running & (self.retired == self.prog_len)):
            m.d.sync += [running.eq(0), self.error.eq(1), self.error_code.eq(ErrorCode.NO_FINISH),
                         self.error_pc.eq(self.retired)]
        with m.If(take):
            m.d.sync += self.retired.eq(self.retired + 1)
        # Instructions still arriving after a stop are dropped.
        m.d.comb += fetched.r_en.eq(take | (~running & fetched.r_rdy))
        return m
