"""cocotb bench of :class:`mvu.hdl.host_link.HostLink` against a model of the protocol of docs/host-link.md.

Frames are built here with ``struct`` and ``zlib`` as that document lays them
out. Random requests (PING, WRITE, READ, CSR_WRITE, CSR_READ, unknown
commands, wrong lengths, addresses out of range, a few payloads of up to
4096 bytes) arrive with random gaps between bytes, some after noise, some
with one bit flipped (then sent again, as the host does), some sent twice
with the same sequence number. Each reply must be the model's, byte for
byte, under random backpressure; the memory (random latency and write
backpressure, byte masks) and the CSRs must match the model's after each
request, and a repeated WRITE or CSR_WRITE must not write at all.
"""

import random
import struct
import zlib
from collections import deque

import cocotb
from cocotb.triggers import ReadOnly, ReadWrite, RisingEdge

from mvu.hdl.host_link import HostLink
from mvu.hdl.interfaces import READ_REQUEST, masked_write_beat
from mvu.sim.benches.runner import field, start

BEAT_BYTES = 8
MEMORY_BYTES = 8192
MAX_PAYLOAD = 4096
SYNC = b"\xa5\x5a"
PING, WRITE, READ, CSR_WRITE, CSR_READ = range(1, 6)
OK, BAD_CRC, UNKNOWN_COMMAND, OUT_OF_RANGE, BAD_LENGTH = range(5)
WRITE_BEAT = masked_write_beat(BEAT_BYTES)


def component() -> HostLink:
    return HostLink(BEAT_BYTES, MEMORY_BYTES)


def frame(sequence: int, command: int, payload: bytes, length: int | None = None) -> bytes:
    """A frame as docs/host-link.md lays it out; ``length`` overrides the payload's length."""
    body = struct.pack("<BBH", sequence, command, len(payload) if length is None else length) + payload
    return SYNC + body + struct.pack("<I", zlib.crc32(body))


class Model:
    """The board's side of the protocol over a memory and 256 CSRs, as docs/host-link.md describes it."""

    def __init__(self, memory: bytearray, csrs: list[int]):
        self.memory, self.csrs, self.last = memory, csrs, None

    def answer(self, request: bytes) -> tuple[bytes, bool]:
        """The reply to ``request`` (sync mark first) and whether it was a retry of the last request."""
        sequence, command, length = struct.unpack_from("<BBH", request, 2)
        if length > MAX_PAYLOAD:
            return frame(sequence, 0x80, bytes([BAD_CRC])), False
        body, (crc,) = request[2:6 + length], struct.unpack_from("<I", request, 6 + length)
        if zlib.crc32(body) != crc:
            return frame(sequence, 0x80, bytes([BAD_CRC])), False
        retry, self.last = self.last == sequence, sequence
        status, data = self.execute(command, request[6:6 + length], retry)
        return frame(sequence, command | 0x80, bytes([status]) + data), retry

    def execute(self, command: int, payload: bytes, retry: bool) -> tuple[int, bytes]:
        n = len(payload)
        if command == PING:
            return OK, struct.pack("<BH", 1, MAX_PAYLOAD)
        if command == WRITE:
            if n < 4:
                return BAD_LENGTH, b""
            (address,) = struct.unpack_from("<I", payload)
            if address + n - 4 > MEMORY_BYTES:
                return OUT_OF_RANGE, b""
            if not retry:
                self.memory[address:address + n - 4] = payload[4:]
            return OK, b""
        if command == READ:
            if n != 6 or struct.unpack_from("<H", payload, 4)[0] >= MAX_PAYLOAD:
                return BAD_LENGTH, b""
            address, size = struct.unpack("<IH", payload)
            if address + size > MEMORY_BYTES:
                return OUT_OF_RANGE, b""
            return OK, bytes(self.memory[address:address + size])
        if command == CSR_WRITE:
            if n != 5:
                return BAD_LENGTH, b""
            index, value = struct.unpack("<BI", payload)
            if not retry:
                self.csrs[index] = value
            return OK, b""
        if command == CSR_READ:
            if n != 2:
                return BAD_LENGTH, b""
            index, count = struct.unpack("<BB", payload)  # the CSR bus's 8-bit address wraps
            return OK, struct.pack(f"<{count}I", *(self.csrs[(index + k) & 0xFF] for k in range(count)))
        return UNKNOWN_COMMAND, b""


def random_request(rng: random.Random) -> tuple[int, bytes]:
    """A command and its payload: mostly well formed, some refused."""
    size = rng.randint(0, 64) if rng.random() < 0.97 else rng.randint(0, MAX_PAYLOAD - 4)
    address = rng.randint(0, MEMORY_BYTES - size)
    if rng.random() < 0.08:  # out of range
        address = rng.choice((MEMORY_BYTES - size + rng.randint(1, 64), 0xFFFFFFFF - rng.randint(0, 64)))
    kind = rng.choices(["ping", "write", "read", "csr_write", "csr_read", "unknown", "bad_length"],
                       [1, 6, 6, 3, 3, 1, 1])[0]
    if kind == "ping":
        return PING, b""
    if kind == "write":
        return WRITE, struct.pack("<I", address) + rng.randbytes(size)
    if kind == "read":
        return READ, struct.pack("<IH", address, MAX_PAYLOAD if rng.random() < 0.03 else min(size, MAX_PAYLOAD - 1))
    if kind == "csr_write":
        return CSR_WRITE, struct.pack("<BI", rng.getrandbits(8), rng.getrandbits(32))
    if kind == "csr_read":
        return CSR_READ, struct.pack("<BB", rng.getrandbits(8), rng.choice((rng.randint(0, 30), 255)))
    if kind == "unknown":
        return rng.choice((0, *range(6, 256))), rng.randbytes(rng.randint(0, 8))
    command = rng.choice((WRITE, READ, CSR_WRITE, CSR_READ))
    wrong_sizes = {WRITE: (0, 3), READ: (5, 7), CSR_WRITE: (4, 6), CSR_READ: (1, 3)}
    return command, rng.randbytes(rng.choice(wrong_sizes[command]))


def noise(rng: random.Random) -> bytes:
    """Random bytes with no sync mark in them."""
    while True:
        data = rng.randbytes(rng.randint(1, 20))
        if SYNC not in data:
            return data


class Bench:
    """Drives ``rx`` byte by byte, takes ``tx`` bytes, and is the memory and the CSRs; one cycle per :meth:`step`."""

    def __init__(self, dut, rng: random.Random):
        self.dut, self.rng = dut, rng
        self.memory = bytearray(rng.randbytes(MEMORY_BYTES))
        self.csrs = [rng.getrandbits(32) for _ in range(256)]
        self.sending: deque[int] = deque()
        self.received = bytearray()
        self.beats: deque[tuple[int, int]] = deque()  # (earliest cycle, data) of requested beats
        self.writes = self.csr_writes = self.cycle = 0

    async def step(self) -> None:
        dut, rng = self.dut, self.rng
        await RisingEdge(dut.clk)
        self.cycle += 1
        send = bool(self.sending) and rng.random() < 0.6
        dut.rx_valid.value = send
        dut.rx_payload.value = self.sending[0] if send else rng.getrandbits(8)
        dut.tx_ready.value = rng.random() < 0.7
        dut.mem_req_ready.value = rng.random() < 0.6
        dut.mem_write_ready.value = rng.random() < 0.6
        beat = bool(self.beats) and self.beats[0][0] <= self.cycle and rng.random() < 0.7
        dut.mem_resp_valid.value = beat
        dut.mem_resp_payload.value = self.beats.popleft()[1] if beat else rng.getrandbits(8 * BEAT_BYTES)
        await ReadWrite()
        dut.csr_rdata.value = self.csrs[int(dut.csr_addr.value)]
        await ReadOnly()
        if send and int(dut.rx_ready.value):
            self.sending.popleft()
        if int(dut.tx_valid.value) and int(dut.tx_ready.value):
            self.received.append(int(dut.tx_payload.value))
        if int(dut.mem_req_valid.value) and int(dut.mem_req_ready.value):
            address, beats = field(int(dut.mem_req_payload.value), READ_REQUEST, "addr", "len")
            first = self.cycle + rng.randint(1, 6)
            for k in range(beats):
                start = address + k * BEAT_BYTES
                self.beats.append((first + k, int.from_bytes(self.memory[start:start + BEAT_BYTES], "little")))
        if int(dut.mem_write_valid.value) and int(dut.mem_write_ready.value):
            data, address, mask = field(int(dut.mem_write_payload.value), WRITE_BEAT, "data", "addr", "mask")
            assert address % BEAT_BYTES == 0 and address + BEAT_BYTES <= MEMORY_BYTES, f"a write to {address:#x}"
            for lane in range(BEAT_BYTES):
                if mask >> lane & 1:
                    self.memory[address + lane] = data >> 8 * lane & 0xFF
            self.writes += 1
        if int(dut.csr_we.value):
            self.csrs[int(dut.csr_addr.value)] = int(dut.csr_wdata.value)
            self.csr_writes += 1

    async def exchange(self, request: bytes, reply: bytes) -> None:
        """Send ``request`` and wait for as many bytes as ``reply`` has; they must be ``reply``."""
        self.sending.extend(request)
        self.received.clear()
        limit = self.cycle + 1000 + 4 * (len(request) + len(reply))
        while len(self.received) < len(reply):
            await self.step()
            assert self.cycle < limit, f"after {request[:12].hex()}...: only {bytes(self.received).hex()} came back"
        assert self.received == reply, f"after {request[:12].hex()}...: {bytes(self.received[:40]).hex()} " \
                                       f"came back, not {reply[:40].hex()}"


@cocotb.test()
async def random_traffic(dut):
    """600 random requests with damaged frames, retries and noise: replies, memory and CSRs match the model."""
    rng = random.Random(17)
    bench = Bench(dut, rng)
    model = Model(bytearray(bench.memory), list(bench.csrs))
    await start(dut, rx_valid=0, tx_ready=0, mem_req_ready=0, mem_resp_valid=0, mem_write_ready=0)
    sequence, seen = 0, {"bad_crc": 0, "retry": 0, "ok": 0, "refused": 0, "long": 0}
    for _ in range(600):
        sequence = (sequence + 1) & 0xFF
        command, payload = random_request(rng)
        request = frame(sequence, command, payload)
        if rng.random() < 0.3:
            await bench.exchange(noise(rng), b"")
        if rng.random() < 0.02:  # a length no host sends: refused after the header
            long = frame(sequence, command, b"", length=rng.randint(MAX_PAYLOAD + 1, 0xFFFF))[:6]
            await bench.exchange(long + noise(rng), model.answer(long + bytes(4))[0])
            seen["long"] += 1
        if rng.random() < 0.1:  # one bit flipped anywhere but the sync mark and the length
            damaged = bytearray(request)
            damaged[rng.choice((2, 3, *range(6, len(request))))] ^= 1 << rng.randrange(8)
            await bench.exchange(bytes(damaged), model.answer(bytes(damaged))[0])
            seen["bad_crc"] += 1
        for attempt in range(1 + (rng.random() < 0.15)):
            writes, csr_writes = bench.writes, bench.csr_writes
            reply, retry = model.answer(request)
            await bench.exchange(request, reply)
            assert not retry or (bench.writes, bench.csr_writes) == (writes, csr_writes), \
                f"a repeated {command:#x} with sequence number {sequence} wrote again"
            seen["retry"] += retry
        seen["ok" if reply[6] == OK else "refused"] += 1
        if bench.memory != model.memory:
            wrong = next(i for i in range(MEMORY_BYTES) if bench.memory[i] != model.memory[i])
            raise AssertionError(f"after {request[:12].hex()}...: the memory differs at {wrong:#x}")
        assert bench.csrs == model.csrs, "the CSRs differ"
    dut._log.info(f"{seen}, {bench.cycle} cycles")
    assert min(seen.values()) >= 5, seen
