"""A board in software: the device side of the host link (docs/host-link.md) with a memory, the core's
CSRs, and programs run by the reference executor. It stands in for a board where there is none, so the
`board` executor's transport, retries and checks are tested end to end over a real serial device (a pty)."""

from __future__ import annotations

import os
import select
import struct
import threading
import tty
from typing import Callable

import numpy as np

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.csr_map import COUNTERS, MAGIC, Csr, ErrorCode, Status, counter_address
from mvu.hdl.contract.host_link import MAX_PAYLOAD, PROTOCOL_VERSION, REPLY, Command, LinkStatus
from mvu.hdl.contract.isa import ProgramError
from mvu.hdl.contract.program import MemoryImage, Program
from mvu.host.executors.link import encode_frame, read_frame
from mvu.host.executors.reference import ReferenceExecutor

__all__ = ["SoftwareBoard", "PtyStream"]


class PtyStream:
    """The board's end of a pseudo-terminal, read with a timeout; :attr:`port` is the host's end."""

    def __init__(self):
        self.fd, follower = os.openpty()
        tty.setraw(follower)
        self.port = os.ttyname(follower)
        self._follower = follower
        self.timeout = 0.2

    def read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            ready, _, _ = select.select([self.fd], [], [], self.timeout)
            if not ready:
                break
            data += os.read(self.fd, size - len(data))
        return data

    def write(self, data: bytes) -> int:
        return os.write(self.fd, data)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._follower)


class SoftwareBoard:
    """Answers link requests from ``stream`` until :meth:`stop`. ``corrupt`` (frame number -> bool) damages
    one byte of the chosen outgoing replies, to exercise the host's retries."""

    def __init__(self, config: HardwareConfig, stream, *, memory_bytes: int = 32 << 20,
                 corrupt: Callable[[int], bool] | None = None):
        self.config, self.stream, self.corrupt = config, stream, corrupt
        self.memory = MemoryImage(memory_bytes)
        self.csrs = {Csr.MAGIC: MAGIC, Csr.CONFIG_FINGERPRINT: config.fingerprint, Csr.STATUS: 0}
        self.executor = ReferenceExecutor(config)
        self.requests = 0  # good frames handled
        self._last: tuple[int, bytes] | None = None  # sequence number and reply of the last request
        self._replies = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> "SoftwareBoard":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _serve(self) -> None:
        while not self._stop.is_set():
            frame = read_frame(self.stream)
            if frame is None:
                continue
            if not frame.command:
                self._send(encode_frame(frame.sequence, REPLY, bytes([LinkStatus.BAD_CRC])))
                continue
            if self._last is not None and self._last[0] == frame.sequence:
                self._send(self._last[1])  # a retry: the stored reply, without running the request again
                continue
            self.requests += 1
            status, payload = self._handle(frame.command, frame.payload)
            reply = encode_frame(frame.sequence, frame.command | REPLY, bytes([status]) + payload)
            self._last = (frame.sequence, reply)
            self._send(reply)

    def _send(self, reply: bytes) -> None:
        self._replies += 1
        if self.corrupt is not None and self.corrupt(self._replies):
            reply = reply[:-1] + bytes([reply[-1] ^ 0xFF])
        self.stream.write(reply)

    def _handle(self, command: int, payload: bytes) -> tuple[int, bytes]:
        handler = self._HANDLERS.get(command)
        if handler is None:
            return LinkStatus.UNKNOWN_COMMAND, b""
        try:
            return LinkStatus.OK, handler(self, payload)
        except struct.error:
            return LinkStatus.BAD_LENGTH, b""
        except IndexError:
            return LinkStatus.OUT_OF_RANGE, b""

    def _ping(self, payload: bytes) -> bytes:
        return struct.pack("<BH", PROTOCOL_VERSION, MAX_PAYLOAD)

    def _range(self, address: int, length: int) -> slice:
        if address + length > self.memory.size:
            raise IndexError(address)
        return slice(address, address + length)

    def _write(self, payload: bytes) -> bytes:
        (address,) = struct.unpack_from("<I", payload)
        data = np.frombuffer(payload, np.uint8, offset=4)
        self.memory.data[self._range(address, data.size)] = data
        return b""

    def _read(self, payload: bytes) -> bytes:
        address, length = struct.unpack("<IH", payload)
        if length > MAX_PAYLOAD - 1:
            raise struct.error("too long")
        return self.memory.data[self._range(address, length)].tobytes()

    def _csr_write(self, payload: bytes) -> bytes:
        index, value = struct.unpack("<BI", payload)
        if index == Csr.CTRL and value & 1:
            self._run()
        elif index in (Csr.PROG_ADDR, Csr.PROG_LEN):
            self.csrs[index] = value
        return b""

    def _csr_read(self, payload: bytes) -> bytes:
        index, count = struct.unpack("<BB", payload)
        return struct.pack(f"<{count}I", *(self.csrs.get(i, 0) for i in range(index, index + count)))

    def _run(self) -> None:
        program = Program(self.memory, self.csrs.get(Csr.PROG_ADDR, 0), self.csrs.get(Csr.PROG_LEN, 0))
        try:
            result = self.executor.run(program)
        except ProgramError:
            self.csrs.update({Csr.STATUS: Status.DONE | Status.ERROR, Csr.ERROR_CODE: ErrorCode.NO_FINISH})
            return
        for index, (name, _) in enumerate(COUNTERS):
            value = result.counters.get(name, 0)
            self.csrs[counter_address(index)], self.csrs[counter_address(index) + 1] = value & 0xFFFFFFFF, value >> 32
        self.csrs.update({Csr.STATUS: Status.DONE, Csr.RETIRED: program.length, Csr.ERROR_CODE: ErrorCode.NONE})

    _HANDLERS = {Command.PING: _ping, Command.WRITE: _write, Command.READ: _read, Command.CSR_WRITE: _csr_write,
                 Command.CSR_READ: _csr_read}
