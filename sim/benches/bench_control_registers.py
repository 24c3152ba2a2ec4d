"""cocotb bench of :class:`mvu.hdl.control_registers.ControlRegisters` against a register model in Python.

Each cycle the bench reads a random register (now and then an unmapped
address), writes random data to random addresses, and drives random run
status and counter events. The model keeps the program registers and the
counters; every read, every ``start`` and the program registers are checked
each cycle. (Counters stay far below 2**32 here: their high words read 0.)
"""

import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.csr_map import COUNTERS, MAGIC, Csr, Status, counter_address
from mvu.hdl.control_registers import ControlRegisters
from mvu.sim.benches.runner import pack, start

CONFIG = HardwareConfig(rows=4, cols=4, act_depth=64, wgt_depth=32, acc_depth=64, mem_bytes=4)
STATUS_INPUTS = {"done": 1, "error": 1, "error_code": 4, "error_pc": 32, "retired": 32}


def component() -> ControlRegisters:
    return ControlRegisters(CONFIG)


class Model:
    """The registers as :class:`ControlRegisters` documents them."""

    def __init__(self):
        self.prog_addr = self.prog_len = 0
        self.counters = [0] * len(COUNTERS)

    def read(self, address: int, busy: int, status: dict[str, int]) -> int:
        registers = {
            Csr.MAGIC: MAGIC,
            Csr.CONFIG_FINGERPRINT: CONFIG.fingerprint,
            Csr.STATUS: busy * Status.BUSY | status["done"] * Status.DONE | status["error"] * Status.ERROR,
            Csr.ERROR_CODE: status["error_code"],
            Csr.ERROR_PC: status["error_pc"],
            Csr.PROG_ADDR: self.prog_addr,
            Csr.PROG_LEN: self.prog_len,
            Csr.RETIRED: status["retired"],
        }
        for index, count in enumerate(self.counters):
            registers[counter_address(index)] = count & 0xFFFF_FFFF
            registers[counter_address(index) + 1] = count >> 32
        return registers.get(address, 0)

    def clock(self, address: int, wdata: int, we: int, busy: int, starting: int, events: list[int]) -> None:
        if we and not busy and address == Csr.PROG_ADDR:
            self.prog_addr = wdata
        if we and not busy and address == Csr.PROG_LEN:
            self.prog_len = wdata
        for index, event in enumerate(events):
            self.counters[index] = 0 if starting else self.counters[index] + event if busy else self.counters[index]


@cocotb.test()
async def random_accesses(dut):
    """Reads, writes, starts and counters match the model over 20,000 random cycles."""
    rng, model = random.Random(41), Model()
    addresses = [*Csr, *range(counter_address(0), counter_address(len(COUNTERS))), 0x09, 0x0F, 0x3F, 0xFF]
    busy, peaks = 0, [0] * len(COUNTERS)
    await start(dut, bus_we=0, control_busy=0, control_starting=0)
    for cycle in range(20_000):
        await RisingEdge(dut.clk)
        address = rng.choice(addresses)
        wdata = rng.getrandbits(32)
        we = rng.random() < 0.2
        busy ^= rng.random() < 0.02  # runs and pauses
        starting = rng.random() < 0.002
        status = {name: rng.getrandbits(bits) for name, bits in STATUS_INPUTS.items()}
        events = [rng.random() < chance for chance in (1.0, 0.9, 0.5, 0.1, 0.02) * 3][:len(COUNTERS)]
        for name, value in (("bus_addr", address), ("bus_wdata", wdata), ("bus_we", we),
                            ("control_busy", busy), ("control_starting", starting), ("events", pack(events, 1)),
                            *((f"control_{name}", value) for name, value in status.items())):
            getattr(dut, name).value = value
        await ReadOnly()

        got = int(dut.bus_rdata.value)
        want = model.read(address, busy, status)
        assert got == want, f"cycle {cycle}: register {address:#x} reads {got:#x}, expected {want:#x}"
        assert int(dut.control_start.value) == (we and address == Csr.CTRL and wdata & 1), f"cycle {cycle}: start"
        programme = int(dut.control_prog_addr.value), int(dut.control_prog_len.value)
        assert programme == (model.prog_addr, model.prog_len), f"cycle {cycle}: program registers {programme}"
        model.clock(address, wdata, we, busy, starting, events)
        peaks = [max(peak, count) for peak, count in zip(peaks, model.counters)]
    assert min(peaks) > 0 and max(peaks) > 500, f"the counters reached only {peaks}"
