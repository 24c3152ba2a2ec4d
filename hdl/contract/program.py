"""Programs in memory: a memory image, the instructions placed in it, and their static checks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mvu.hdl.contract.config import INSTRUCTION_BYTES, HardwareConfig
from mvu.hdl.contract.isa import (
    TABLE_BYTES,
    Buffer,
    Compute,
    Finish,
    Instruction,
    Load,
    Opcode,
    ProgramError,
    Store,
    decode_columns,
    decode_program,
    encode_columns,
    encode_program,
)
from mvu.hdl.contract.residual_add import ADD_BLOCK_BYTES, ResidualAdd
from mvu.hdl.contract.window import window_extent

__all__ = ["MemoryImage", "Program", "InstructionColumns", "check_program", "RunResult"]


class MemoryImage:
    """A flat byte-addressed external memory with a bump allocator."""

    def __init__(self, size: int = 0, *, alignment: int = 64):
        self.data = np.zeros(size, dtype=np.uint8)
        self.alignment = alignment
        self._top = 0

    @property
    def size(self) -> int:
        return self.data.size

    def allocate(self, nbytes: int, *, alignment: int | None = None) -> int:
        """Reserve ``nbytes`` (growing the image as needed) and return their address."""
        if nbytes < 0:
            raise ValueError(f"cannot allocate {nbytes} bytes")
        align = alignment or self.alignment
        address = -(-self._top // align) * align
        self._top = address + nbytes
        if self._top > self.data.size:
            grown = np.zeros(max(self._top, 2 * self.data.size), dtype=np.uint8)
            grown[:self.data.size] = self.data
            self.data = grown
        return address

    def place(self, array: np.ndarray | bytes, *, alignment: int | None = None) -> int:
        raw = np.frombuffer(bytes(array), dtype=np.uint8) if isinstance(array, (bytes, bytearray)) \
            else np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        address = self.allocate(raw.size, alignment=alignment)
        self.data[address:address + raw.size] = raw
        return address

    def read(self, address: int, nbytes: int) -> np.ndarray:
        return self.data[address:address + nbytes]

    @property
    def used(self) -> int:
        """Bytes allocated so far, to the alignment: what :meth:`trim` keeps (:attr:`size` may hold spare capacity)."""
        return -(-self._top // self.alignment) * self.alignment

    def trim(self) -> None:
        """Drop unused capacity so the image is exactly as large as what was allocated."""
        self.data = self.data[:self.used].copy()


@dataclass
class Program:
    """Instructions placed in a memory image, ready for any executor."""

    memory: MemoryImage
    address: int
    length: int
    #: Useful multiply-accumulates the program performs (for utilization figures).
    macs: int = 0
    notes: dict = field(default_factory=dict)

    @classmethod
    def place(cls, memory: MemoryImage, instructions: list[Instruction], *, macs: int = 0) -> "Program":
        address = memory.place(encode_program(instructions), alignment=INSTRUCTION_BYTES)
        return cls(memory=memory, address=address, length=len(instructions), macs=macs)

    @classmethod
    def place_words(cls, memory: MemoryImage, words: np.ndarray, *, macs: int = 0) -> "Program":
        """A program of already encoded instructions (uint8 ``[n, 32]``, e.g. from :class:`InstructionColumns`)."""
        address = memory.place(words, alignment=INSTRUCTION_BYTES)
        return cls(memory=memory, address=address, length=len(words), macs=macs)

    def instructions(self) -> list[Instruction]:
        raw = self.memory.read(self.address, self.length * INSTRUCTION_BYTES).tobytes()
        return decode_program(raw)


class InstructionColumns:
    """A program written as runs of one opcode whose fields are given per run, each a scalar or one value per
    instruction; ``first`` and ``last`` set fields (dependency flags) of a run's first and last instruction.
    :meth:`encode` turns it all into instruction words at once (:func:`~mvu.hdl.contract.isa.encode_columns`)."""

    def __init__(self):
        self._runs: list[tuple[Opcode, int, dict, dict, dict]] = []

    def add(self, opcode: Opcode, length: int, /, *, first: dict | None = None, last: dict | None = None,
            **fields) -> None:
        self._runs.append((opcode, length, fields, first or {}, last or {}))

    def encode(self) -> np.ndarray:
        total = sum(length for _, length, *_ in self._runs)
        names = {name for run in self._runs for part in run[2:] for name in part}
        columns = {name: np.zeros(total, np.int64) for name in names | {"opcode"}}
        start = 0
        for opcode, length, fields, first, last in self._runs:
            columns["opcode"][start:start + length] = opcode
            for name, value in fields.items():
                columns[name][start:start + length] = value
            for name, value in first.items():
                columns[name][start] = value
            for name, value in last.items():
                columns[name][start + length - 1] = value
            start += length
        return encode_columns(columns)


_TOKENS = ("load_to_compute", "compute_to_load", "compute_to_store", "store_to_compute")
_TOKEN_LIMIT = 255
# Which flag of which instruction pops or pushes which token; pops come first, as in the hardware.
_TOKEN_FLAGS = {
    Load: (("wait_compute", "pop", "compute_to_load"), ("signal_compute", "push", "load_to_compute")),
    Compute: (("wait_load", "pop", "load_to_compute"), ("wait_store", "pop", "store_to_compute"),
              ("signal_load", "push", "compute_to_load"), ("signal_store", "push", "compute_to_store")),
    Store: (("wait_compute", "pop", "compute_to_store"), ("signal_compute", "push", "store_to_compute")),
}


def check_program(config: HardwareConfig, memory: MemoryImage | np.ndarray, address: int,
                  length: int) -> dict[str, np.ndarray]:
    """Decode and check a program against the configuration and the memory it will run in.

    Raises :class:`ProgramError` naming the instruction and the problem for
    anything the hardware would misread, run out of range, or deadlock on.
    Returns the decoded program as columns (see :func:`~mvu.hdl.contract.isa.decode_columns`).
    """
    data = memory.data if isinstance(memory, MemoryImage) else memory
    size = data.size
    if length < 1:
        raise ProgramError("a program needs at least one instruction (FINISH)")
    if address % INSTRUCTION_BYTES:
        raise ProgramError(f"program address {address:#x} is not {INSTRUCTION_BYTES}-byte aligned")
    end = address + length * INSTRUCTION_BYTES
    if end > size:
        raise ProgramError(f"program of {length} instructions at {address:#x} runs past the end of memory ({size} bytes)")
    columns = decode_columns(data[address:end].reshape(length, INSTRUCTION_BYTES))
    _check_built_in(config, columns)
    if not _passes_checks(config, data, columns):
        _explain(config, data, decode_program(data[address:end].tobytes()))
        raise AssertionError("the vectorized program checks reject what the sequential ones accept")
    return columns


def _check_built_in(config: HardwareConfig, c: dict[str, np.ndarray]) -> None:
    """Refuse what the configuration's hardware leaves out: float32 requantization without ``float32_requant``,
    the residual add without ``residual_add``, the accumulators' maximum without ``max_pool``."""
    stores = c["opcode"] == Opcode.STORE
    if not config.float32_requant:
        uses = np.flatnonzero(stores & (c["float32_scale"] != 0) & (c["raw"] == 0))
        if uses.size:
            raise ProgramError(f"instruction {uses[0]} (STORE): float32_scale requantization is not built into "
                               f"this configuration ({config.describe()}); use fixed-point scales or a "
                               f"configuration with float32_requant")
    if not config.residual_add:
        uses = np.flatnonzero(stores & (c["add"] != 0))
        if uses.size:
            raise ProgramError(f"instruction {uses[0]} (STORE): the residual add is not built into this "
                               f"configuration ({config.describe()}); add on the host or use a configuration "
                               f"with residual_add")
    if not config.max_pool:
        uses = np.flatnonzero((c["opcode"] == Opcode.COMPUTE) & (c["maximum"] != 0))
        if uses.size:
            raise ProgramError(f"instruction {uses[0]} (COMPUTE): the accumulators' maximum is not built into this "
                               f"configuration ({config.describe()}); pool on the host or use a configuration "
                               f"with max_pool")


def _outside_buffer(start: np.ndarray, count: np.ndarray, depth) -> np.ndarray:
    return (count < 1) | (start + count > depth)


def _outside_memory(start, count, stride, nbytes, beat: int, size: int) -> np.ndarray:
    return (start % beat != 0) | (stride % beat != 0) | (start + (count - 1) * stride + nbytes > size)


def _passes_checks(config: HardwareConfig, data: np.ndarray, c: dict[str, np.ndarray]) -> bool:
    """All of :func:`_explain`'s checks at once, over the whole program: whether it passes them."""
    op, count, beat, size = c["opcode"], c["count"], config.mem_bytes, data.size
    finishes = np.flatnonzero(op == Opcode.FINISH)
    if finishes.size == 0 or finishes[0] != op.size - 1:
        return False
    is_load, is_compute, is_store = op == Opcode.LOAD, op == Opcode.COMPUTE, op == Opcode.STORE
    act = c["buffer"] == Buffer.ACT
    entry = np.where(act, config.act_entry_bytes, config.wgt_entry_bytes)
    window = c["window"].astype(bool)
    in_h, in_w = c["in_h"], c["in_w"]
    # A window LOAD into the activation buffer may read entries at any byte (a 3-channel stem's tap rows).
    unaligned = ((c["dram_addr"] % beat != 0) | (c["dram_stride"] % beat != 0) | (c["row_stride"] % beat != 0))
    end = window_extent(c["dram_addr"], c["dram_stride"], c["row_stride"], in_h, in_w, entry)
    bad_window = ((in_h < 1) | (in_w < 1) | (c["start_x"] >= c["out_w"]) | (~act & unaligned)
                  | (-(-end // beat) * beat > size))
    bad_load = (_outside_buffer(c["sram_addr"], count, np.where(act, config.act_depth, config.wgt_depth))
                | np.where(window, bad_window, _outside_memory(c["dram_addr"], count, c["dram_stride"], entry, beat,
                                                               size)))
    zero_point = c["act_zero_point"]
    bad_compute = (_outside_buffer(c["act_addr"], count, config.act_depth)
                   | _outside_buffer(c["acc_addr"], count, config.acc_depth)
                   | (c["preload"].astype(bool) & _outside_buffer(c["wgt_addr"], config.rows, config.wgt_depth))
                   | np.where(c["act_signed"].astype(bool), (zero_point < -128) | (zero_point > 127),
                              (zero_point < 0) | (zero_point > 255)))
    raw, load_params = c["raw"].astype(bool), c["load_params"].astype(bool) & is_store
    load_table, lookup = c["load_table"].astype(bool) & is_store, c["lookup"].astype(bool)
    add = c["add"].astype(bool) & is_store
    bad_store = (_outside_buffer(c["acc_addr"], count, config.acc_depth)
                 | _outside_memory(c["dram_addr"], count, c["dram_stride"],
                                   np.where(raw, config.acc_entry_bytes, config.cols), beat, size)
                 | (load_params & _outside_memory(c["param_addr"], 1, 0, config.param_block_bytes, beat, size))
                 | (~load_params & ~raw & (np.cumsum(load_params) == 0))
                 | (c["clamp_min"] > c["clamp_max"])
                 | (~raw & ((c["clamp_min"] < -128) | (c["clamp_max"] > 255)))
                 | (load_table & _outside_memory(c["table_addr"], 1, 0, TABLE_BYTES, beat, size))
                 | (lookup & (raw | (np.cumsum(load_table) == 0)))
                 | (add & (raw | ~load_params | _outside_memory(c["param_addr"] + config.param_block_bytes, 1, 0,
                                                                ADD_BLOCK_BYTES, beat, size))))
    if (is_load & bad_load | is_compute & bad_compute | is_store & bad_store).any():
        return False
    if add.any() and not all(_addend_fits(config, data, *row) for row in zip(
            *(c[name][add].tolist() for name in ("param_addr", "dram_addr", "count", "dram_stride")))):
        return False
    blocks = data[c["param_addr"][load_params, None] + np.arange(config.param_block_bytes)]
    blocks = blocks.view(np.int32).reshape(-1, 3, config.cols)
    if (blocks[:, 1] < 0).any() or ((blocks[:, 2] < 0) | (blocks[:, 2] > 63)).any():
        return False
    return _tokens_balance(c)


def _tokens_balance(c: dict[str, np.ndarray]) -> bool:
    """No instruction waits for a token that was never signalled, and none overfills a queue."""
    change = {token: [np.zeros(c["opcode"].size, dtype=np.int64)] * 2 for token in _TOKENS}
    for kind, flags in _TOKEN_FLAGS.items():
        for flag, action, token in flags:
            used = (c["opcode"] == kind.opcode) & (c[flag] != 0)
            pops, pushes = change[token]
            change[token] = [pops + used, pushes] if action == "pop" else [pops, pushes + used]
    for pops, pushes in change.values():
        level = np.cumsum(pushes - pops)
        if (level - pushes < 0).any() or (level > _TOKEN_LIMIT).any():
            return False
    return True


def _explain(config: HardwareConfig, data: np.ndarray, instructions: list[Instruction]) -> None:
    """Raise :class:`ProgramError` for the first instruction that fails a check, in program order."""
    size = data.size
    length = len(instructions)
    beat = config.mem_bytes
    tokens = dict.fromkeys(_TOKENS, 0)

    def fail(index: int, message: str) -> None:
        raise ProgramError(f"instruction {index} ({type(instructions[index]).__name__.upper()}): {message}")

    def check_range(index, what, start, count, depth):
        if count < 1:
            fail(index, f"{what} count must be at least 1")
        if start + count > depth:
            fail(index, f"{what} entries {start}..{start + count - 1} exceed the buffer ({depth} entries)")

    def check_dram(index, what, start, count, stride, nbytes):
        if start % beat or stride % beat:
            fail(index, f"{what} address {start:#x} and stride {stride} must be multiples of the "
                        f"{beat}-byte memory beat")
        last = start + (count - 1) * stride + nbytes
        if last > size:
            fail(index, f"{what} bytes {start:#x}..{last - 1:#x} lie outside memory ({size} bytes)")

    def pop(index, name):
        if tokens[name] == 0:
            fail(index, f"waits for a {name.replace('_', ' ')} token that no earlier instruction "
                        f"signals: the program would deadlock")
        tokens[name] -= 1

    def push(index, name):
        tokens[name] += 1
        if tokens[name] > _TOKEN_LIMIT:
            fail(index, f"more than {_TOKEN_LIMIT} {name.replace('_', ' ')} tokens outstanding")

    finished = False
    params_loaded = table_loaded = False
    for index, ins in enumerate(instructions):
        if finished:
            fail(index, "follows FINISH and would never run")
        if isinstance(ins, Load):
            depth = config.act_depth if ins.buffer == Buffer.ACT else config.wgt_depth
            entry = config.act_entry_bytes if ins.buffer == Buffer.ACT else config.wgt_entry_bytes
            check_range(index, f"{ins.buffer.name} buffer", ins.sram_addr, ins.count, depth)
            if ins.window:
                _check_window(ins, beat if ins.buffer == Buffer.WGT else 1, beat, size, entry,
                              lambda message: fail(index, message))
            else:
                check_dram(index, "source", ins.dram_addr, ins.count, ins.dram_stride, entry)
        elif isinstance(ins, Compute):
            check_range(index, "activation", ins.act_addr, ins.count, config.act_depth)
            check_range(index, "accumulator", ins.acc_addr, ins.count, config.acc_depth)
            if ins.preload:
                check_range(index, "weight", ins.wgt_addr, config.rows, config.wgt_depth)
            if ins.act_signed and not -128 <= ins.act_zero_point <= 127:
                fail(index, f"int8 activation zero point {ins.act_zero_point} is outside -128..127")
            if not ins.act_signed and not 0 <= ins.act_zero_point <= 255:
                fail(index, f"uint8 activation zero point {ins.act_zero_point} is outside 0..255")
        elif isinstance(ins, Store):
            check_range(index, "accumulator", ins.acc_addr, ins.count, config.acc_depth)
            row_bytes = config.acc_entry_bytes if ins.raw else config.cols
            check_dram(index, "destination", ins.dram_addr, ins.count, ins.dram_stride, row_bytes)
            if ins.load_params:
                check_dram(index, "parameter block", ins.param_addr, 1, 0, config.param_block_bytes)
                block = data[ins.param_addr:ins.param_addr + config.param_block_bytes].view(np.int32)
                multiplier, shift = block[config.cols:2 * config.cols], block[2 * config.cols:]
                if (multiplier < 0).any():
                    fail(index, f"parameter block at {ins.param_addr:#x} has a negative multiplier")
                if ((shift < 0) | (shift > 63)).any():
                    fail(index, f"parameter block at {ins.param_addr:#x} has a shift outside 0..63")
            elif not ins.raw and not params_loaded:
                fail(index, "requantizes before any STORE of the program loaded parameters")
            params_loaded |= ins.load_params
            if not ins.clamp_min <= ins.clamp_max:
                fail(index, f"clamp_min {ins.clamp_min} exceeds clamp_max {ins.clamp_max}")
            if not ins.raw and not (-128 <= ins.clamp_min and ins.clamp_max <= 255):
                fail(index, f"clamp range {ins.clamp_min}..{ins.clamp_max} does not fit a byte")
            if ins.load_table:
                check_dram(index, "lookup table", ins.table_addr, 1, 0, TABLE_BYTES)
            table_loaded |= ins.load_table
            if ins.lookup and ins.raw:
                fail(index, "lookup applies to requantized bytes; a raw STORE cannot look them up")
            if ins.lookup and not table_loaded:
                fail(index, "looks up bytes before any STORE of the program loaded a table")
            if ins.add:
                _check_add(config, data, ins, lambda message: fail(index, message))
        elif isinstance(ins, Finish):
            finished = True
        for flag, action, token in _TOKEN_FLAGS.get(type(ins), ()):
            if getattr(ins, flag):
                (pop if action == "pop" else push)(index, token)
    if not finished:
        raise ProgramError(f"the program's {length} instructions end without FINISH")


def _add_problem(config: HardwareConfig, data: np.ndarray, store: Store) -> str | None:
    """What is wrong with a STORE's ``add``: its flags, its add block or its addend rows (None: nothing)."""
    if store.raw or not store.load_params:
        return "add needs requantized bytes and the parameter block it is read with (load_params, not raw)"
    block_addr, beat = store.param_addr + config.param_block_bytes, config.mem_bytes
    if block_addr + ADD_BLOCK_BYTES > data.size:
        return f"add block {block_addr:#x}..{block_addr + ADD_BLOCK_BYTES - 1:#x} lies outside memory ({data.size} bytes)"
    try:
        add = ResidualAdd.from_block(data[block_addr:block_addr + ADD_BLOCK_BYTES])
    except ValueError as error:
        return f"add block at {block_addr:#x}: {error}"
    start = store.dram_addr + add.addend_offset
    end = start + (store.count - 1) * store.dram_stride + config.cols
    if start % beat or start < 0 or end > data.size:
        return (f"addend rows {start:#x}..{end - 1:#x} (offset {add.addend_offset}) must be {beat}-byte aligned "
                f"and inside memory ({data.size} bytes)")
    return None


def _addend_fits(config: HardwareConfig, data: np.ndarray, param_addr: int, dram_addr: int, count: int,
                 dram_stride: int) -> bool:
    store = Store(acc_addr=0, count=count, dram_addr=dram_addr, dram_stride=dram_stride, param_addr=param_addr,
                  load_params=True, add=True)
    return _add_problem(config, data, store) is None


def _check_add(config: HardwareConfig, data: np.ndarray, store: Store, fail) -> None:
    problem = _add_problem(config, data, store)
    if problem is not None:
        fail(problem)


def _check_window(load: Load, alignment: int, beat: int, size: int, entry: int, fail) -> None:
    """A window LOAD's descriptor: a non-empty input, its first pixel within a row of ``out_w``, addresses and
    strides that are multiples of ``alignment`` and the whole ``in_h x in_w`` input rectangle in memory, to the end
    of its last beat."""
    if load.in_h < 1 or load.in_w < 1:
        fail(f"window input {load.in_h} x {load.in_w} is empty")
    if load.start_x >= load.out_w:
        fail(f"window start column {load.start_x} is not inside a row of out_w={load.out_w} outputs")
    if load.dram_addr % alignment or load.dram_stride % alignment or load.row_stride % alignment:
        fail(f"window address {load.dram_addr:#x}, stride {load.dram_stride} and row stride {load.row_stride} "
             f"must be multiples of the {alignment}-byte memory beat")
    end = window_extent(load.dram_addr, load.dram_stride, load.row_stride, load.in_h, load.in_w, entry)
    if -(-end // beat) * beat > size:
        fail(f"window input bytes {load.dram_addr:#x}..{end - 1:#x} lie outside memory ({size} bytes)")


@dataclass
class RunResult:
    """What an executor reports besides the memory it changed."""

    backend: str
    wall_seconds: float
    instructions: int
    counters: dict[str, int]
