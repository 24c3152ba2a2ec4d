"""The host link's frame format and codes (docs/host-link.md), shared by the board's gateware
(:mod:`mvu.hdl.host_link`) and the host (:mod:`mvu.host.executors.link`)."""

from enum import IntEnum

__all__ = ["SYNC", "PROTOCOL_VERSION", "MAX_PAYLOAD", "REPLY", "Command", "LinkStatus"]

#: The two bytes that start every frame.
SYNC = b"\xa5\x5a"
PROTOCOL_VERSION = 1
#: Largest payload of one frame, requests and replies alike (a reply's status byte included).
MAX_PAYLOAD = 4096
#: A reply's command is the request's with this bit set.
REPLY = 0x80


class Command(IntEnum):
    PING = 0x01       # -> version u8, max payload u16
    WRITE = 0x02      # address u32, bytes
    READ = 0x03       # address u32, length u16 -> bytes
    CSR_WRITE = 0x04  # index u8, value u32
    CSR_READ = 0x05   # index u8, count u8 -> count values u32


class LinkStatus(IntEnum):
    """The first byte of every reply's payload."""

    OK = 0
    BAD_CRC = 1
    UNKNOWN_COMMAND = 2
    OUT_OF_RANGE = 3
    BAD_LENGTH = 4
