"""The whole accelerator: command processor, units, buffers, memory port and CSRs."""

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out, flipped

from mvu.hdl.command_processor import CommandProcessor
from mvu.hdl.compute_unit import ComputeUnit
from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.control_registers import EVENTS, ControlRegisters
from mvu.hdl.interfaces import INSTRUCTION_BITS, CsrBus, MemoryBus
from mvu.hdl.load_unit import LoadUnit
from mvu.hdl.store_unit import StoreUnit
from mvu.hdl.token_link import TokenLink

__all__ = ["MvuCore", "ReadId"]


class ReadId:
    """Tags of read requests on the memory port; responses come back in order with the tag."""

    FETCH = 0
    LOAD = 1
    STORE = 2


class MvuCore(wiring.Component):
    """The matrix-vector unit with its external memory port (``mem``) and CSR bus (``csr``).

    ``busy``, ``done`` and ``error`` mirror the status register. As a
    top-level module its ports are named as :func:`mvu.hdl.verilog.ports`
    names them (``csr_addr``, ``mem_req_payload``, ...), which
    ``sim/harness.cpp`` uses.
    """

    def __init__(self, config: HardwareConfig):
        self.config = config
        super().__init__({
            "csr": In(CsrBus()),
            "mem": Out(MemoryBus(config.mem_bytes)),
            "busy": Out(1), "done": Out(1), "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        R, C = cfg.rows, cfg.cols

        m.submodules.command = command = CommandProcessor(cfg)
        m.submodules.load = load = LoadUnit(cfg)
        m.submodules.compute = compute = ComputeUnit(cfg)
        m.submodules.store = store = StoreUnit(cfg)
        m.submodules.registers = registers = ControlRegisters(cfg)
        wiring.connect(m, flipped(self.csr), registers.bus)
        wiring.connect(m, registers.control, command.control)
        m.d.comb += [self.busy.eq(command.control.busy), self.done.eq(command.control.done),
                     self.error.eq(command.control.error)]

        # On-chip buffers.
        m.submodules.act_buffer = act = Memory(shape=8 * R, depth=cfg.act_depth, init=[])
        m.submodules.wgt_buffer = wgt = Memory(shape=8 * C, depth=cfg.wgt_depth, init=[])
        m.submodules.acc_buffer = acc = Memory(shape=32 * C, depth=cfg.acc_depth, init=[])
        acc_write = acc.write_port()
        wiring.connect(m, load.act_write, act.write_port())
        wiring.connect(m, load.wgt_write, wgt.write_port())
        wiring.connect(m, compute.act_read, act.read_port())
        wiring.connect(m, compute.wgt_read, wgt.read_port())
        wiring.connect(m, compute.acc_read, acc.read_port(transparent_for=(acc_write,)))
        wiring.connect(m, compute.acc_write, acc_write)
        wiring.connect(m, store.acc_read, acc.read_port())

        # Instruction queues, one per unit.
        queues = {}
        for name, unit in (("load", load), ("compute", compute), ("store", store)):
            queues[name] = queue = SyncFIFOBuffered(width=INSTRUCTION_BITS, depth=cfg.queue_depth)
            m.submodules[f"{name}_queue"] = queue
            wiring.connect(m, getattr(command, name), queue.w_stream)
            wiring.connect(m, queue.r_stream, unit.instr)
        m.d.comb += command.units_idle.eq(
            load.idle & compute.idle & store.idle
            & ~queues["load"].r_rdy & ~queues["compute"].r_rdy & ~queues["store"].r_rdy)

        # Dependency tokens between neighbouring units.
        for name, earlier, later in (("load_compute", load, compute), ("compute_store", compute, store)):
            m.submodules[f"tokens_{name}"] = link = TokenLink()
            wiring.connect(m, earlier.next_tokens, link.prev)
            wiring.connect(m, later.prev_tokens, link.next)
            m.d.comb += link.clear.eq(command.control.starting)

        # Memory reads: the fetch first, then the store unit's parameters, then loads.
        readers = {ReadId.FETCH: command.mem, ReadId.STORE: store.mem, ReadId.LOAD: load.mem}
        with m.If(command.mem.req.valid):
            self._grant(m, ReadId.FETCH, command.mem)
        with m.Elif(store.mem.req.valid):
            self._grant(m, ReadId.STORE, store.mem)
        with m.Elif(load.mem.req.valid):
            self._grant(m, ReadId.LOAD, load.mem)
        for read_id, reader in readers.items():
            m.d.comb += [
                reader.resp.valid.eq(self.mem.resp.valid & (self.mem.resp.p.id == read_id)),
                reader.resp.payload.eq(self.mem.resp.p.data),
            ]
        wiring.connect(m, store.write, flipped(self.mem.write))

        events = {
            "cycles": 1,
            "array_active": compute.active,
            "compute_stall_token": compute.stall_token,
            "compute_stall_weights": compute.stall_weights,
            "compute_idle": compute.idle & ~queues["compute"].r_rdy,
            "load_busy": ~load.idle,
            "load_stall_token": load.stall_token,
            "store_busy": ~store.idle,
            "store_stall_token": store.stall_token,
            "store_stall_memory": store.stall_memory,
            "mem_read_beats": self.mem.resp.valid,
            "mem_write_beats": self.mem.write.valid & self.mem.write.ready,
            "dispatch_stall": command.dispatch_stall,
        }
        assert list(events) == list(EVENTS.members)
        m.d.comb += [registers.events[name].eq(event) for name, event in events.items()]
        return m

    def _grant(self, m: Module, read_id: int, reader: wiring.PureInterface) -> None:
        """Pass ``reader``'s read request to the memory, tagged with ``read_id``."""
        request = self.mem.req
        m.d.comb += [
            request.valid.eq(1),
            request.p.addr.eq(reader.req.p.addr),
            request.p.len.eq(reader.req.p.len),
            request.p.id.eq(read_id),
            reader.req.ready.eq(request.ready),
        ]
