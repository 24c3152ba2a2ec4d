"""The whole accelerator: command processor, units, buffers, memory port and CSRs."""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mvu.hdl.command_processor import CommandProcessor
from mvu.hdl.compute_unit import ComputeUnit
from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.csr_map import COUNTERS, MAGIC, Csr, Status
from mvu.hdl.load_unit import LoadUnit
from mvu.hdl.store_unit import StoreUnit

__all__ = ["MvuCore", "ReadId"]


class ReadId:
    """Tags of read requests on the memory port; responses come back in order with the tag."""

    FETCH = 0
    LOAD = 1
    STORE = 2


class MvuCore(wiring.Component):
    """The matrix-vector unit with its external memory port and CSR bus.

    Memory port: read requests (``addr`` in bytes, ``len`` in beats, ``id``)
    with valid/ready; read data beats come back in request order, tagged with
    the id, and are always accepted. Writes are one beat each with
    valid/ready. A beat is ``mem_bytes`` wide; addresses are beat-aligned.
    CSR bus: word address, write strobe, combinational read data.
    """

    def __init__(self, config: HardwareConfig):
        self.config = config
        P = config.mem_bytes
        super().__init__({
            "csr_addr": In(8), "csr_wdata": In(32), "csr_we": In(1), "csr_rdata": Out(32),
            "mem_rd_req_valid": Out(1), "mem_rd_req_ready": In(1), "mem_rd_req_addr": Out(32),
            "mem_rd_req_len": Out(16), "mem_rd_req_id": Out(2),
            "mem_rd_resp_valid": In(1), "mem_rd_resp_id": In(2), "mem_rd_resp_data": In(8 * P),
            "mem_wr_valid": Out(1), "mem_wr_ready": In(1), "mem_wr_addr": Out(32), "mem_wr_data": Out(8 * P),
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

        # On-chip buffers.
        m.submodules.act_buffer = act = Memory(shape=8 * R, depth=cfg.act_depth, init=[])
        m.submodules.wgt_buffer = wgt = Memory(shape=8 * C, depth=cfg.wgt_depth, init=[])
        m.submodules.acc_buffer = acc = Memory(shape=32 * C, depth=cfg.acc_depth, init=[])
        act_w, act_r = act.write_port(), act.read_port()
        wgt_w, wgt_r = wgt.write_port(), wgt.read_port()
        acc_w = acc.write_port()
        acc_r_compute = acc.read_port(transparent_for=(acc_w,))
        acc_r_store = acc.read_port()
        m.d.comb += [
            act_w.en.eq(load.act_wr_en), act_w.addr.eq(load.act_wr_addr), act_w.data.eq(load.act_wr_data),
            wgt_w.en.eq(load.wgt_wr_en), wgt_w.addr.eq(load.wgt_wr_addr), wgt_w.data.eq(load.wgt_wr_data),
            act_r.addr.eq(compute.act_rd_addr), compute.act_rd_data.eq(act_r.data),
            wgt_r.addr.eq(compute.wgt_rd_addr), compute.wgt_rd_data.eq(wgt_r.data),
            acc_r_compute.addr.eq(compute.acc_rd_addr), compute.acc_rd_data.eq(acc_r_compute.data),
            acc_w.en.eq(compute.acc_wr_en), acc_w.addr.eq(compute.acc_wr_addr), acc_w.data.eq(compute.acc_wr_data),
            acc_r_store.addr.eq(store.acc_rd_addr), store.acc_rd_data.eq(acc_r_store.data),
        ]

        # Instruction queues, one per unit.
        queues = {}
        for name, unit, valid, ready in (("load", load, command.load_valid, command.load_ready),
                                         ("compute", compute, command.compute_valid, command.compute_ready),
                                         ("store", store, command.store_valid, command.store_ready)):
            queues[name] = queue = SyncFIFOBuffered(width=256, depth=cfg.queue_depth)
            m.submodules[f"{name}_queue"] = queue
            m.d.comb += [
                queue.w_data.eq(command.instr), queue.w_en.eq(valid), ready.eq(queue.w_rdy),
                unit.instr.eq(queue.r_data), unit.instr_valid.eq(queue.r_rdy),
                queue.r_en.eq(unit.instr_ready),
            ]
        m.d.comb += command.units_idle.eq(
            load.idle & compute.idle & store.idle
            & ~queues["load"].r_rdy & ~queues["compute"].r_rdy & ~queues["store"].r_rdy)

        # Dependency tokens between neighbouring units.
        def token(name, push, pop):
            count = Signal(8, name=f"tokens_{name}")
            m.d.sync += count.eq(count + push - pop)
            with m.If(command.starting):
                m.d.sync += count.eq(0)
            return count != 0

        m.d.comb += [
            compute.load_token_avail.eq(token("load_to_compute", load.token_push, compute.load_token_pop)),
            load.token_avail.eq(token("compute_to_load", compute.load_token_push, load.token_pop)),
            store.token_avail.eq(token("compute_to_store", compute.store_token_push, store.token_pop)),
            compute.store_token_avail.eq(token("store_to_compute", store.token_push, compute.store_token_pop)),
        ]

        # Read arbitration: fetch first, then the store unit's parameters, then loads.
        clients = ((ReadId.FETCH, command), (ReadId.STORE, store), (ReadId.LOAD, load))
        with m.If(command.rd_req_valid):
            self._grant(m, ReadId.FETCH, command)
        with m.Elif(store.rd_req_valid):
            self._grant(m, ReadId.STORE, store)
        with m.Elif(load.rd_req_valid):
            self._grant(m, ReadId.LOAD, load)
        for read_id, client in clients:
            m.d.comb += [
                client.rd_resp_valid.eq(self.mem_rd_resp_valid & (self.mem_rd_resp_id == read_id)),
                client.rd_resp_data.eq(self.mem_rd_resp_data),
            ]
        m.d.comb += [
            self.mem_wr_valid.eq(store.wr_valid), self.mem_wr_addr.eq(store.wr_addr),
            self.mem_wr_data.eq(store.wr_data), store.wr_ready.eq(self.mem_wr_ready),
        ]

        # Control and status registers.
        prog_addr = Signal(32)
        prog_len = Signal(32)
        m.d.comb += [
            command.prog_addr.eq(prog_addr), command.prog_len.eq(prog_len),
            command.start.eq(self.csr_we & (self.csr_addr == Csr.CTRL) & self.csr_wdata[0]),
            self.busy.eq(command.busy), self.done.eq(command.done), self.error.eq(command.error),
        ]
        with m.If(self.csr_we & ~command.busy):
            with m.Switch(self.csr_addr):
                with m.Case(Csr.PROG_ADDR):
                    m.d.sync += prog_addr.eq(self.csr_wdata)
                with m.Case(Csr.PROG_LEN):
                    m.d.sync += prog_len.eq(self.csr_wdata)

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
            "mem_read_beats": self.mem_rd_resp_valid,
            "mem_write_beats": self.mem_wr_valid & self.mem_wr_ready,
            "dispatch_stall": command.dispatch_stall,
        }
        assert list(events) == [name for name, _ in COUNTERS]
        registers = {
            Csr.MAGIC: MAGIC,
            Csr.CONFIG_FINGERPRINT: cfg.fingerprint,
            Csr.STATUS: command.busy * Status.BUSY | command.done * Status.DONE | command.error * Status.ERROR,
            Csr.ERROR_CODE: command.error_code,
            Csr.ERROR_PC: command.error_pc,
            Csr.PROG_ADDR: prog_addr,
            Csr.PROG_LEN: prog_len,
            Csr.RETIRED: command.retired,
        }
        for index, (name, event) in enumerate(events.items()):
            counter = Signal(64, name=f"counter_{name}")
            with m.If(command.starting):
                m.d.sync += counter.eq(0)
            with m.Elif(command.busy):
                m.d.sync += counter.eq(counter + event)
            registers[Csr.COUNTER_BASE + 2 * index] = counter[:32]
            registers[Csr.COUNTER_BASE + 2 * index + 1] = counter[32:]
        with m.Switch(self.csr_addr):
            for address, value in registers.items():
                with m.Case(address):
                    m.d.comb += self.csr_rdata.eq(value)
        return m

    def _grant(self, m, read_id, client):
        m.d.comb += [
            self.mem_rd_req_valid.eq(1),
            self.mem_rd_req_addr.eq(client.rd_req_addr),
            self.mem_rd_req_len.eq(client.rd_req_len),
            self.mem_rd_req_id.eq(read_id),
            client.rd_req_ready.eq(self.mem_rd_req_ready),
        ]
