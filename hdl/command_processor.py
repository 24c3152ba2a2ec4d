"""The command processor: fetches the instruction stream and dispatches it to the units."""

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from mvu.hdl.contract.config import INSTRUCTION_BYTES, HardwareConfig
from mvu.hdl.contract.csr_map import ErrorCode
from mvu.hdl.contract.isa import Opcode
from mvu.hdl.interfaces import INSTRUCTION_BITS, INSTRUCTIONS, MemoryReader, RunControl
from mvu.hdl.pipeline import instruction_field

__all__ = ["CommandProcessor"]

_FETCH_DEPTH = 4
# Cycles after a dispatch before an empty queue can be trusted (FIFO latency).
_SETTLE_CYCLES = 4


class CommandProcessor(wiring.Component):
    """Fetches the program through ``mem`` and dispatches it to the units' queues.

    A ``control.start`` takes effect once the previous run has settled: its
    fetches drained and ``units_idle`` (``control.starting`` marks that cycle;
    ``control.busy`` covers the wait). LOAD, COMPUTE and STORE go in order to
    the ``load``, ``compute`` and ``store`` streams; SYNC waits for
    ``units_idle``; FINISH waits likewise and then raises ``done``. An unknown
    opcode, or running out of instructions before FINISH, stops with
    ``error`` and records the code and the instruction's index.
    ``dispatch_stall``: a queue refuses the instruction offered to it.
    """

    def __init__(self, config: HardwareConfig):
        self.config = config
        super().__init__({
            "control": In(RunControl()),
            "mem": Out(MemoryReader(config.mem_bytes)),
            "load": Out(INSTRUCTIONS), "compute": Out(INSTRUCTIONS), "store": Out(INSTRUCTIONS),
            "units_idle": In(1),
            "dispatch_stall": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P = self.config.mem_bytes
        beats = INSTRUCTION_BYTES // P
        m.submodules.fetched = fetched = SyncFIFOBuffered(width=INSTRUCTION_BITS, depth=_FETCH_DEPTH)
        control, request, response = self.control, self.mem.req, self.mem.resp

        running = Signal()
        fetch_index = Signal(32)
        outstanding = Signal(range(_FETCH_DEPTH + 1))
        beat = Signal(range(beats))
        settle = Signal(range(_SETTLE_CYCLES + 1))

        pending = Signal()
        m.d.comb += control.busy.eq(running | pending)
        with m.If(control.start & ~control.busy):
            m.d.sync += [pending.eq(1), control.done.eq(0), control.error.eq(0), control.error_code.eq(ErrorCode.NONE),
                         control.retired.eq(0)]
        # Words still arriving for a stopped run must not become the next run's instructions.
        m.d.comb += control.starting.eq(pending & (outstanding == 0) & (fetched.level == 0) & self.units_idle)
        with m.If(control.starting):
            m.d.sync += [pending.eq(0), running.eq(1), fetch_index.eq(0), beat.eq(0)]

        # Fetch: keep the FIFO topped up, never past the end of the program.
        room = fetched.level + outstanding < _FETCH_DEPTH
        m.d.comb += [
            request.valid.eq(running & (fetch_index < control.prog_len) & room),
            request.p.addr.eq(control.prog_addr + fetch_index * INSTRUCTION_BYTES),
            request.p.len.eq(beats),
        ]
        requested = request.valid & request.ready
        with m.If(requested):
            m.d.sync += fetch_index.eq(fetch_index + 1)
        if beats > 1:
            gathered = Signal(8 * P * (beats - 1))
            with m.If(response.valid):
                m.d.sync += gathered.eq(Cat(gathered[8 * P:], response.payload))
            assembled = Cat(gathered, response.payload)
        else:
            assembled = response.payload
        arrived = response.valid & (beat == beats - 1)
        with m.If(response.valid):
            m.d.sync += beat.eq(beat + 1)  # wraps: beats is a power of two
        m.d.comb += [fetched.w_en.eq(arrived), fetched.w_data.eq(assembled)]
        m.d.sync += outstanding.eq(outstanding + requested - arrived)

        # Dispatch.
        head = fetched.r_data
        opcode = instruction_field(head, "opcode")
        queues = {Opcode.LOAD: self.load, Opcode.COMPUTE: self.compute, Opcode.STORE: self.store}
        m.d.comb += [queue.payload.eq(head) for queue in queues.values()]
        have = running & fetched.r_rdy
        take = Signal()
        quiet = self.units_idle & (settle == 0)
        with m.If(settle != 0):
            m.d.sync += settle.eq(settle - 1)
        with m.If(have):
            with m.Switch(opcode):
                for code, queue in queues.items():
                    with m.Case(code):
                        m.d.comb += [queue.valid.eq(1), take.eq(queue.ready), self.dispatch_stall.eq(~queue.ready)]
                        with m.If(queue.ready):
                            m.d.sync += settle.eq(_SETTLE_CYCLES)
                with m.Case(Opcode.SYNC):
                    m.d.comb += take.eq(quiet)
                with m.Case(Opcode.FINISH):
                    m.d.comb += take.eq(quiet)
                    with m.If(quiet):
                        m.d.sync += [running.eq(0), control.done.eq(1)]
                with m.Default():
                    m.d.sync += [running.eq(0), control.error.eq(1), control.error_code.eq(ErrorCode.ILLEGAL_OPCODE),
                                 control.error_pc.eq(control.retired)]
        with m.Elif(running & (control.retired == control.prog_len)):
            m.d.sync += [running.eq(0), control.error.eq(1), control.error_code.eq(ErrorCode.NO_FINISH),
                         control.error_pc.eq(control.retired)]
        with m.If(take):
            m.d.sync += control.retired.eq(control.retired + 1)
        # Instructions still arriving after a stop are dropped.
        m.d.comb += fetched.r_en.eq(take | (~running & fetched.r_rdy))
        return m
