"""Control and status registers: word addresses shared by the HDL and the drivers (docs/isa.md)."""

from enum import IntEnum

__all__ = ["Csr", "Status", "ErrorCode", "COUNTERS", "counter_address", "MAGIC"]

#: Read from :attr:`Csr.MAGIC`: "MVU1" in little-endian ASCII.
MAGIC = 0x3155564D


class Csr(IntEnum):
    MAGIC = 0x00
    CONFIG_FINGERPRINT = 0x01
    CTRL = 0x02          # write bit 0 = start
    STATUS = 0x03        # bit 0 busy, bit 1 done, bit 2 error
    ERROR_CODE = 0x04
    ERROR_PC = 0x05      # index of the offending instruction
    PROG_ADDR = 0x06     # byte address of the program
    PROG_LEN = 0x07      # number of instructions
    RETIRED = 0x08       # instructions dispatched in the last run
    COUNTER_BASE = 0x10  # counter k: low word at 0x10 + 2k, high word at 0x11 + 2k


class Status(IntEnum):
    BUSY = 1
    DONE = 2
    ERROR = 4


class ErrorCode(IntEnum):
    NONE = 0
    ILLEGAL_OPCODE = 1
    NO_FINISH = 2


#: Hardware performance counters, all counted in cycles while the core runs
#: (the memory beat counters count beats).
COUNTERS: tuple[tuple[str, str], ...] = (
    ("cycles", "cycles from start to done"),
    ("array_active", "cycles in which an activation entry entered the array (useful MAC cycles)"),
    ("compute_stall_token", "cycles the compute unit waited for a load or store token"),
    ("compute_stall_weights", "cycles the array waited for a weight tile to be preloaded"),
    ("compute_idle", "cycles the compute unit had no instruction"),
    ("load_busy", "cycles the load unit worked on an instruction"),
    ("load_stall_token", "cycles the load unit waited for a compute token"),
    ("store_busy", "cycles the store unit worked on an instruction"),
    ("store_stall_token", "cycles the store unit waited for a compute token"),
    ("store_stall_memory", "cycles the store unit had a beat the memory did not accept"),
    ("mem_read_beats", "memory beats read"),
    ("mem_write_beats", "memory beats written"),
    ("dispatch_stall", "cycles the dispatcher held an instruction its unit's queue could not take"),
)


def counter_address(index: int) -> int:
    return Csr.COUNTER_BASE + 2 * index
