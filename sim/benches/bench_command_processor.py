"""cocotb bench of :class:`mvu.hdl.command_processor.CommandProcessor`: random programs, one run after another.

A bench memory holds each program among random bytes and answers fetches
with random latency; the units take dispatches with random backpressure and
stay busy for random times (``units_idle`` falls up to three cycles after a
dispatch, as behind a queue). Programs end with FINISH, hit an illegal
opcode, or run out without FINISH.
"""

import random
from dataclasses import fields

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from mvu.hdl.command_processor import CommandProcessor
from mvu.hdl.contract.config import INSTRUCTION_BYTES, HardwareConfig
from mvu.hdl.contract.csr_map import ErrorCode
from mvu.hdl.contract.isa import OPCODE_FIELDS, Compute, Finish, Load, Opcode, Store, Sync
from mvu.hdl.interfaces import INSTRUCTION_BITS
from mvu.sim.benches.runner import ReadMemory, start

CONFIG = HardwareConfig(rows=4, cols=4, act_depth=64, wgt_depth=32, acc_depth=64, mem_bytes=4)
MEMORY_BYTES = 16384
UNITS = {Opcode.LOAD: "load", Opcode.COMPUTE: "compute", Opcode.STORE: "store"}


def component() -> CommandProcessor:
    return CommandProcessor(CONFIG)


def random_word(rng: random.Random) -> int:
    """A LOAD, COMPUTE, STORE or SYNC with every field and token flag random, as an instruction word."""
    cls = rng.choice([Load, Compute, Store, Load, Compute, Store, Sync])
    spec = OPCODE_FIELDS[cls.opcode]
    values = {f.name: rng.randint(spec[f.name].minimum, spec[f.name].maximum) if f.name in spec
              else rng.random() < 0.5 for f in fields(cls)}
    return int.from_bytes(cls(**values).encode(), "little")


def random_program(rng: random.Random, ending: str) -> tuple[list[int], int, ErrorCode]:
    """Instruction words, the index where execution stops and the error it stops with.

    ``ending`` is ``"finish"`` (FINISH, then junk the processor must not
    run), ``"illegal"`` (an unknown opcode, then more instructions) or
    ``"none"`` (no FINISH at all).
    """
    words = [random_word(rng) for _ in range(rng.randint(0, 24))]
    stop = len(words)
    if ending == "finish":
        words.append(int.from_bytes(Finish().encode(), "little"))
        error = ErrorCode.NONE
    elif ending == "illegal":
        opcode = rng.choice([0, *range(max(Opcode) + 1, 16)])
        words.append(rng.getrandbits(INSTRUCTION_BITS) & ~0xF | opcode)
        error = ErrorCode.ILLEGAL_OPCODE
    else:
        error = ErrorCode.NO_FINISH
    if ending != "none":
        words += [random_word(rng) for _ in range(rng.randint(0, 6))]
    return words, stop, error


async def run_program(dut, rng: random.Random, words: list[int], stop: int, error: ErrorCode) -> int:
    """Run one program from ``start`` to ``done``/``error`` and check everything it did.

    Per cycle: at most one ``*_valid`` is high, and ``dispatch_stall``
    exactly while it is refused; ``retired`` counts one instruction at a
    time, and SYNC or FINISH retires only once all earlier dispatched work
    has finished; nothing is fetched or dispatched after the stop. At the end:
    the fetches read the program in order and not past its end; every
    LOAD/COMPUTE/STORE before ``stop`` was dispatched once, in order, to its
    unit, with its exact word; ``done``/``error``, ``error_code``,
    ``error_pc`` and ``retired`` are as expected. Returns the cycle the run
    stopped in.
    """
    P = CONFIG.mem_bytes
    address = INSTRUCTION_BYTES * rng.randint(0, MEMORY_BYTES // INSTRUCTION_BYTES - len(words) - 1)
    program = b"".join(w.to_bytes(INSTRUCTION_BYTES, "little") for w in words)
    memory = rng.randbytes(address) + program + rng.randbytes(MEMORY_BYTES - address - len(program))
    port = ReadMemory(dut, memory, P, rng)
    expected = [(UNITS[Opcode(w & 0xF)], w) for w in words[:stop] if w & 0xF in UNITS]
    dispatched, work = [], []  # work: (dispatch cycle, first busy cycle, first idle cycle) per dispatch
    retired, ended_at, settled_from = 0, None, 0
    for cycle in range(10_000):
        await RisingEdge(dut.clk)
        port.drive(cycle)
        dut.control_start.value = cycle == 0
        dut.control_prog_addr.value, dut.control_prog_len.value = address, len(words)
        ready = {unit: rng.random() < 0.6 for unit in UNITS.values()}
        for unit, value in ready.items():
            getattr(dut, f"{unit}_ready").value = value
        dut.units_idle.value = not any(busy <= cycle < idle for _, busy, idle in work)
        await ReadOnly()

        port.sample(cycle)
        if cycle == 0:  # the start cycle still shows the previous run's state
            continue
        assert ended_at is None or not int(dut.mem_req_valid.value), f"cycle {cycle}: fetch after the stop"
        valid = [unit for unit in UNITS.values() if int(getattr(dut, f"{unit}_valid").value)]
        assert len(valid) <= 1 and (ended_at is None or not valid), f"cycle {cycle}: valid on {valid}"
        assert int(dut.dispatch_stall.value) == any(not ready[unit] for unit in valid), f"cycle {cycle}: stall"
        if valid and ready[valid[0]]:
            dispatched.append((valid[0], int(getattr(dut, f"{valid[0]}_payload").value)))
            busy = cycle + 1 + rng.randint(0, 3)
            work.append((cycle, busy, busy + rng.choice([1, 2, rng.randint(1, 40)])))
        now = int(dut.control_retired.value)
        steps = (0, 1) if ended_at is None else (0,)
        assert now - retired in steps, f"cycle {cycle}: retired went {retired} -> {now}"
        if now > retired and words[retired] & 0xF in (Opcode.SYNC, Opcode.FINISH):
            late = [w for w in work if w[0] < cycle - 1 and w[2] > cycle - 1]
            assert not late, f"cycle {cycle - 1}: instruction {retired} retired while units worked on {late}"
        retired = now
        if ended_at is None and (int(dut.control_done.value) or int(dut.control_error.value)):
            ended_at = cycle
        if port.pending or ended_at is None:
            settled_from = cycle + 8  # the last fetched words must have left the FIFO before the next start
        elif cycle > settled_from:
            break
    else:
        raise AssertionError(f"the program did not stop: {retired} of {len(words)} instructions retired")

    assert dispatched == expected, f"dispatched {len(dispatched)} instructions, expected {len(expected)}"
    assert len(port.requests) <= len(words), "fetched past the end of the program"
    assert port.requests == [(address + INSTRUCTION_BYTES * i, INSTRUCTION_BYTES // P)
                             for i in range(len(port.requests))], "fetches out of order"
    status = {name: int(getattr(dut, f"control_{name}").value)
              for name in ("busy", "done", "error", "error_code", "retired")}
    assert status == {"busy": 0, "done": int(error == ErrorCode.NONE), "error": int(error != ErrorCode.NONE),
                      "error_code": error, "retired": stop + (error == ErrorCode.NONE)}, status
    if error != ErrorCode.NONE:
        assert int(dut.control_error_pc.value) == stop, f"error_pc {int(dut.control_error_pc.value)}, expected {stop}"
    return ended_at


@cocotb.test()
async def random_programs(dut):
    """Sixty programs: most end with FINISH, some with an illegal opcode, some without FINISH."""
    rng = random.Random(7)
    await start(dut, control_start=0, mem_resp_valid=0)
    endings = ["finish"] * 36 + ["illegal"] * 12 + ["none"] * 12
    rng.shuffle(endings)
    cycles = [await run_program(dut, rng, *random_program(rng, ending)) for ending in endings]
    assert sum(cycles) > 3000


@cocotb.test()
async def empty_program(dut):
    """``prog_len`` 0 stops at once with NO_FINISH at index 0."""
    await start(dut, control_start=0, mem_resp_valid=0)
    await run_program(dut, random.Random(8), [], 0, ErrorCode.NO_FINISH)


@cocotb.test()
async def restart_right_after_error(dut):
    """A ``start`` right after an error stop must not run the words still being fetched for the old program.

    Program A (at 0) is an illegal word and two LOADs, which get prefetched;
    program B (at 0x100) is a lone FINISH, started the cycle after A's error.
    B must dispatch nothing and finish.
    """
    rng = random.Random(9)
    a = [rng.getrandbits(INSTRUCTION_BITS) & ~0xF | 9] + [random_word(rng) & ~0xF | Opcode.LOAD for _ in range(2)]
    b = Finish().encode()
    memory = b"".join(w.to_bytes(INSTRUCTION_BYTES, "little") for w in a).ljust(0x100, b"\0") + b
    port = ReadMemory(dut, memory, CONFIG.mem_bytes, rng, ready_chance=1.0, latency=(1, 1), gap_chance=0.0)
    await start(dut, control_start=0, mem_resp_valid=0)
    dut.load_ready.value = dut.compute_ready.value = dut.store_ready.value = dut.units_idle.value = 1
    restart, dispatched = None, 0
    for cycle in range(200):
        await RisingEdge(dut.clk)
        port.drive(cycle)
        dut.control_start.value = cycle in (0, restart)
        dut.control_prog_addr.value, dut.control_prog_len.value = (0, len(a)) if restart is None else (0x100, 1)
        await ReadOnly()
        port.sample(cycle)
        if restart is None and int(dut.control_error.value):
            restart = cycle + 1
        elif restart is not None and cycle > restart:
            dispatched += int(dut.load_valid.value)
            if int(dut.control_done.value) or int(dut.control_error.value):
                break
    done, retired = int(dut.control_done.value), int(dut.control_retired.value)
    assert (dispatched, done, retired) == (0, 1, 1), f"program B dispatched {dispatched} LOADs, {done=}, {retired=}"
