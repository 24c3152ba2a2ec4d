"""cocotb bench of :class:`mvu.hdl.link_soc.LinkSoc`: the host's requests over the serial line, bit by bit.

The bench is the host: frames as docs/host-link.md lays them out, sent and
received as 8N1 waveforms. It pings the board, reads MAGIC and the
configuration's fingerprint, fills a window of memory with random bytes,
writes more at odd addresses and reads odd ranges back, has a damaged frame
refused, and runs a one-instruction program (FINISH) through the core's
memory port until STATUS says done.
"""

import random
import struct

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from mvu.hdl.block_ram_memory import BlockRamMemory
from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.csr_map import MAGIC, Csr, Status
from mvu.hdl.contract.isa import Finish, encode_program
from mvu.hdl.link_soc import LinkSoc
from mvu.hdl.memory_arbiter import ID_BITS
from mvu.sim.benches.bench_host_link import BAD_CRC, CSR_READ, CSR_WRITE, OK, PING, READ, WRITE, frame
from mvu.sim.benches.runner import start

CONFIG = HardwareConfig(rows=4, cols=4, act_depth=64, wgt_depth=32, acc_depth=64, mem_bytes=4)
DIVISOR = 6
MEMORY_BYTES = 4096
WINDOW = 0x400  # where the memory round trips go


def component() -> LinkSoc:
    return LinkSoc(CONFIG, divisor=DIVISOR, memory=BlockRamMemory(CONFIG.mem_bytes, MEMORY_BYTES, id_bits=ID_BITS))


class SerialHost:
    """Sends bytes on ``rx`` and decodes ``tx``, sampling each bit in its middle; one cycle per :meth:`step`."""

    def __init__(self, dut):
        self.dut, self.levels, self.received = dut, [], bytearray()
        self.line, self.bit_cycle = [], None  # tx so far; the cycle of the current byte's start bit

    def send(self, data: bytes) -> None:
        for byte in data:
            for bit in (0, *((byte >> i) & 1 for i in range(8)), 1):
                self.levels += [bit] * DIVISOR

    async def step(self) -> None:
        await RisingEdge(self.dut.clk)
        self.dut.rx.value = self.levels.pop(0) if self.levels else 1
        await ReadOnly()
        self.line.append(int(self.dut.tx.value))
        now = len(self.line) - 1
        if self.bit_cycle is None:
            if now and self.line[-2] == 1 and self.line[-1] == 0:
                self.bit_cycle = now
        elif now == self.bit_cycle + 9 * DIVISOR + DIVISOR // 2:
            start = self.bit_cycle + DIVISOR // 2
            bits = [self.line[start + k * DIVISOR] for k in range(10)]
            assert bits[0] == 0 and bits[9] == 1, f"cycle {now}: a byte with bits {bits}"
            self.received.append(sum(bit << i for i, bit in enumerate(bits[1:9])))
            self.bit_cycle = None

    async def request(self, sequence: int, command: int, payload: bytes, damage: int | None = None) -> bytes:
        """Send a frame (one bit of byte ``damage`` flipped) and return its reply's payload, status first."""
        request = bytearray(frame(sequence, command, payload))
        if damage is not None:
            request[damage] ^= 0x10
        self.send(bytes(request))
        self.received.clear()
        for _ in range(20 * DIVISOR * (len(request) + 4200)):
            await self.step()
            if len(self.received) >= 6 and len(self.received) >= 10 + struct.unpack_from("<H", self.received, 4)[0]:
                break
        reply = bytes(self.received)
        assert reply[:2] == b"\xa5\x5a" and len(reply) >= 10, f"no reply: {reply.hex()}"
        (length,) = struct.unpack_from("<H", reply, 4)
        assert reply == frame(reply[2], reply[3], reply[6:6 + length]), f"a damaged reply: {reply.hex()}"
        expected_command = 0x80 if damage is not None else command | 0x80
        assert (reply[2], reply[3]) == (sequence, expected_command), f"a reply {reply[:6].hex()} to {request[:6].hex()}"
        return reply[6:6 + length]


@cocotb.test()
async def host_session(dut):
    """Ping, fingerprint, memory round trips, a damaged frame and a FINISH program over the serial line."""
    rng = random.Random(3)
    host = SerialHost(dut)
    await start(dut, rx=1)
    sequence = iter(range(1, 256))
    assert await host.request(next(sequence), PING, b"") == bytes([OK, 1, 0x00, 0x10])
    reply = await host.request(next(sequence), CSR_READ, struct.pack("<BB", Csr.MAGIC, 2))
    assert reply == bytes([OK]) + struct.pack("<II", MAGIC, CONFIG.fingerprint), reply.hex()

    memory = bytearray(MEMORY_BYTES)
    memory[WINDOW:WINDOW + 256] = rng.randbytes(256)
    fill = struct.pack("<I", WINDOW) + memory[WINDOW:WINDOW + 256]
    assert await host.request(next(sequence), WRITE, fill) == bytes([OK])
    for _ in range(4):
        address, data = WINDOW + rng.randrange(0, 200), rng.randbytes(rng.randint(1, 40))
        assert await host.request(next(sequence), WRITE, struct.pack("<I", address) + data) == bytes([OK])
        memory[address:address + len(data)] = data
        first, size = WINDOW + rng.randrange(0, 200), rng.randint(1, 56)
        reply = await host.request(next(sequence), READ, struct.pack("<IH", first, size))
        assert reply == bytes([OK]) + memory[first:first + size], reply.hex()
    assert await host.request(next(sequence), WRITE, struct.pack("<I", 7) + b"\xff", damage=8) == bytes([BAD_CRC])

    program = encode_program([Finish()])
    assert await host.request(next(sequence), WRITE, struct.pack("<I", 0x800) + program) == bytes([OK])
    for index, value in ((Csr.PROG_ADDR, 0x800), (Csr.PROG_LEN, 1), (Csr.CTRL, 1)):
        assert await host.request(next(sequence), CSR_WRITE, struct.pack("<BI", index, value)) == bytes([OK])
    status = await host.request(next(sequence), CSR_READ, struct.pack("<BB", Csr.STATUS, 1))
    assert status == bytes([OK]) + struct.pack("<I", Status.DONE), status.hex()
    retired = await host.request(next(sequence), CSR_READ, struct.pack("<BB", Csr.RETIRED, 1))
    assert retired == bytes([OK]) + struct.pack("<I", 1), retired.hex()
