"""The host link to a board (docs/host-link.md): framed requests and replies over a serial byte stream,
with sequence numbers, CRC-32, timeouts and retries. :class:`Link` is the host side; :func:`read_frame` and
:func:`encode_frame` serve both sides."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Protocol

from mvu.hdl.contract.host_link import MAX_PAYLOAD, REPLY, SYNC, Command, LinkStatus

__all__ = ["Frame", "Link", "LinkError", "encode_frame", "read_frame"]

_HEADER = struct.Struct("<BBH")  # sequence number, command, payload length
_CRC = struct.Struct("<I")

class LinkError(ConnectionError):
    """The board cannot be reached or keeps failing; the message says which and what to check."""


class LinkRefused(LinkError):
    """The board answered a request with a status other than OK (:attr:`status`)."""

    def __init__(self, message: str, status: LinkStatus):
        super().__init__(message)
        self.status = status


class ByteStream(Protocol):
    """What a link runs over: a pyserial ``Serial`` (a port, ``socket://HOST:PORT``, ``loop://``)."""

    def write(self, data: bytes) -> int | None: ...

    def read(self, size: int) -> bytes: ...


@dataclass(frozen=True)
class Frame:
    sequence: int
    command: int
    payload: bytes


def encode_frame(sequence: int, command: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a frame carries at most {MAX_PAYLOAD} bytes, not {len(payload)}")
    body = _HEADER.pack(sequence & 0xFF, command, len(payload)) + payload
    return SYNC + body + _CRC.pack(zlib.crc32(body))


def read_frame(stream: ByteStream) -> Frame | None:
    """The next frame: bytes before a sync mark are skipped. None when the stream times out; a frame whose
    CRC fails comes back with command 0 (its bytes cannot be trusted, so no command is guessed)."""
    previous = b""
    while True:
        byte = stream.read(1)
        if not byte:
            return None
        if previous + byte == SYNC:
            break
        previous = byte
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    sequence, command, length = _HEADER.unpack(header)
    if length > MAX_PAYLOAD:
        return Frame(sequence, 0, b"")
    rest = stream.read(length + _CRC.size)
    if len(rest) < length + _CRC.size:
        return None
    payload, (crc,) = rest[:length], _CRC.unpack(rest[length:])
    if zlib.crc32(header + payload) != crc:
        return Frame(sequence, 0, b"")
    return Frame(sequence, command, payload)


class Link:
    """Requests to a board over ``stream``: each is sent with the next sequence number and sent again,
    unchanged, until a reply with that number and a good CRC comes back (``retries`` more times at most).
    The board answers a repeated number with its stored reply, so a retried write runs once."""

    def __init__(self, stream: ByteStream, *, name: str = "the board", retries: int = 5):
        self.stream, self.name, self.retries = stream, name, retries
        self.sequence = 0
        self.resent = 0  # frames sent again, over the link's life

    def request(self, command: Command, payload: bytes = b"") -> bytes:
        """The reply's payload after its status byte; raises :class:`LinkError` when retries run out or
        the board refuses the request."""
        self.sequence = (self.sequence + 1) & 0xFF
        frame = encode_frame(self.sequence, command, payload)
        failures = []
        for attempt in range(1 + self.retries):
            if attempt:
                self.resent += 1
            self.stream.write(frame)
            reply = read_frame(self.stream)
            while reply is not None and reply.command and reply.sequence != self.sequence:
                reply = read_frame(self.stream)  # a late reply to an earlier try
            if reply is None:
                failures.append("no answer")
            elif reply.command != command | REPLY or not reply.payload:
                failures.append("a damaged reply")
            elif reply.payload[0] == LinkStatus.BAD_CRC:
                failures.append("the request arrived damaged")
            elif reply.payload[0] != LinkStatus.OK:
                status = LinkStatus(reply.payload[0])
                raise LinkRefused(f"{self.name} refused {command.name}: {status.name}", status)
            else:
                return reply.payload[1:]
        if all(failure == "no answer" for failure in failures):
            raise LinkError(f"{self.name} did not answer ({len(failures)} tries): is it powered, programmed "
                            "with an mvu bitstream, and on this port at this baud rate?")
        raise LinkError(f"{self.name}: {command.name} failed {len(failures)} times ({', '.join(failures)}): "
                        "a noisy link; try a lower baud rate")

    def ping(self) -> tuple[int, int]:
        """(protocol version, largest payload) of the board."""
        reply = self.request(Command.PING)
        return reply[0], struct.unpack("<H", reply[1:3])[0]

    def write(self, address: int, data: bytes, chunk: int = MAX_PAYLOAD - 4) -> None:
        for offset in range(0, len(data), chunk):
            self.request(Command.WRITE, struct.pack("<I", address + offset) + data[offset:offset + chunk])

    def read(self, address: int, length: int, chunk: int = MAX_PAYLOAD - 1) -> bytes:
        parts = []
        for offset in range(0, length, chunk):
            size = min(chunk, length - offset)
            parts.append(self.request(Command.READ, struct.pack("<IH", address + offset, size)))
        return b"".join(parts)

    def memory_bytes(self) -> int:
        """Bytes of memory the board's WRITEs and READs reach: the boundary of the one-byte READs it refuses as
        ``OUT_OF_RANGE``, found in 32 of them."""
        def readable(address: int) -> bool:
            try:
                self.read(address, 1)
            except LinkRefused as refused:
                if refused.status != LinkStatus.OUT_OF_RANGE:
                    raise
                return False
            return True

        if not readable(0):
            return 0
        low, high = 0, 1 << 32  # byte low is readable, byte high is not
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if readable(middle) else (low, middle)
        return high

    def write_csr(self, index: int, value: int) -> None:
        self.request(Command.CSR_WRITE, struct.pack("<BI", index, value & 0xFFFFFFFF))

    def read_csrs(self, index: int, count: int = 1) -> list[int]:
        reply = self.request(Command.CSR_READ, struct.pack("<BB", index, count))
        return list(struct.unpack(f"<{count}I", reply))
