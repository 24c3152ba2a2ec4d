"""The bit-exact reference executor: the instruction set's semantics, in numpy."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from mvu.hdl.contract.config import INSTRUCTION_BYTES, HardwareConfig
from mvu.hdl.contract.isa import TABLE_BYTES, Buffer, Opcode
from mvu.hdl.contract.program import Program, RunResult, check_program
from mvu.hdl.contract.requantization import requantize
from mvu.hdl.contract.residual_add import ADD_BLOCK_BYTES, ResidualAdd
from mvu.hdl.contract.window import WINDOW_FIELDS, read_window
from mvu.host.executors import FIXED_WEIGHTS
from mvu.host.executors.execution_plan import ExecutionPlan, build_plan
from mvu.host.executors.intmatmul import as_unsigned, centred_matmul, engine_name
from mvu.host.executors.kernels import same_bytes
from mvu.host.executors.residual_add import add_rows

__all__ = ["ReferenceExecutor"]


def _wrap_int32(values: np.ndarray) -> np.ndarray:
    return values.astype(np.int64).astype(np.int32)


_FIELDS = {
    Opcode.LOAD: ("buffer", "sram_addr", "count", "dram_addr", "dram_stride", "window", *WINDOW_FIELDS),
    Opcode.COMPUTE: ("act_addr", "count", "acc_addr", "wgt_addr", "preload", "accumulate", "act_signed",
                     "act_zero_point", "maximum"),
    Opcode.STORE: ("acc_addr", "count", "dram_addr", "dram_stride", "param_addr", "load_params", "raw",
                   "float32_scale", "out_zero_point", "clamp_min", "clamp_max", "table_addr", "load_table", "lookup", "add"),
}
_RAW, _FLOAT32_SCALE, _LOAD_TABLE, _LOOKUP, _ADD = (_FIELDS[Opcode.STORE].index(name) for name in (
    "raw", "float32_scale", "load_table", "lookup", "add"))
#: Distinct accumulator ranges left pending before all of them are computed (bounds the bookkeeping).
_MAX_PENDING = 64


def _runs(columns: dict[str, np.ndarray]):
    """``(opcode, [field tuples])`` for each run of consecutive instructions with one opcode."""
    opcode = columns["opcode"]
    rows = {op: iter(zip(*(columns[name][opcode == op].tolist() for name in names)))
            for op, names in _FIELDS.items()}
    starts = np.flatnonzero(np.diff(opcode, prepend=-1)).tolist()
    for start, end in zip(starts, starts[1:] + [opcode.size]):
        op = int(opcode[start])
        yield op, list(islice(rows[op], end - start)) if op in rows else []


def _strided_rows(memory: np.ndarray, address: int, count: int, stride: int, width: int):
    """``count`` rows of ``width`` bytes, ``stride`` apart: a view when the rows are disjoint, else an index."""
    if stride >= width and address + count * stride <= memory.size:
        return slice(address, address + count * stride), (count, stride), slice(0, width)
    return address + stride * np.arange(count)[:, None] + np.arange(width), None, None


def _read_rows(memory, address, count, stride, width) -> np.ndarray:
    where, shape, columns = _strided_rows(memory, address, count, stride, width)
    return memory[where] if shape is None else memory[where].reshape(shape)[:, columns]


def _write_rows(memory, address, stride, values: np.ndarray) -> None:
    where, shape, columns = _strided_rows(memory, address, values.shape[0], stride, values.shape[1])
    if shape is None:
        memory[where] = values
    else:
        memory[where].reshape(shape)[:, columns] = values


@dataclass
class _Pending:
    """Products still to be added to an accumulator range: ``sum((x - zero point) @ w)``, onto zero when
    ``fresh``; ``xs`` holds (uint8 activations, zero point) pairs."""

    fresh: bool
    xs: list = field(default_factory=list)
    ws: list = field(default_factory=list)


class _Machine:
    """The architectural state, with COMPUTE work deferred until a STORE reads its accumulators.

    Accumulation wraps modulo 2**32, so summing an accumulator range's
    products in any order, as one long matrix product, gives the same bits
    as adding them one instruction at a time.
    """

    def __init__(self, config: HardwareConfig, memory: np.ndarray):
        self.config, self.memory = config, memory
        self.act = np.zeros((config.act_depth, config.rows), dtype=np.uint8)
        self.wgt = np.zeros((config.wgt_depth, config.cols), dtype=np.uint8)
        self.acc = np.zeros((config.acc_depth, config.cols), dtype=np.int32)
        self.tile = np.zeros((config.rows, config.cols), dtype=np.int8)  # the active weight bank
        self.params = np.zeros((3, config.cols), dtype=np.int32)
        self.table = np.zeros(TABLE_BYTES, dtype=np.uint8)
        self.slices: dict[tuple, tuple] = {}  # activation slices read since the last ACT load
        self.pending: dict[tuple[int, int], _Pending] = {}

    def load(self, buffer: int, sram_addr: int, count: int, dram_addr: int, dram_stride: int, window: int,
             *descriptor: int) -> None:
        target = self.act if buffer == Buffer.ACT else self.wgt
        width = target.shape[1]
        target[sram_addr:sram_addr + count] = (
            read_window(self.memory, width, count, dram_addr, dram_stride, *descriptor) if window
            else _read_rows(self.memory, dram_addr, count, dram_stride, width))
        if buffer == Buffer.ACT:
            self.slices.clear()

    def compute(self, act_addr: int, count: int, acc_addr: int, wgt_addr: int, preload: int, accumulate: int,
                act_signed: int, act_zero_point: int, maximum: int) -> None:
        if preload:
            self.tile = self.wgt[wgt_addr:wgt_addr + self.config.rows].view(np.int8).copy()
        if accumulate and maximum:  # the larger of each accumulator and its product: now, not deferred
            self.settle(acc_addr, count)
            values, zero_point = self._slice(act_addr, count, act_signed, act_zero_point)
            rows = slice(acc_addr, acc_addr + count)
            self.acc[rows] = np.maximum(self.acc[rows], _wrap_int32(centred_matmul(values, zero_point, self.tile)))
            return
        key = (acc_addr, count)
        pending = self.pending.get(key)
        if pending is None or not accumulate:
            self.settle(acc_addr, count, keep=key)
            pending = self.pending[key] = _Pending(fresh=not accumulate)
        pending.xs.append(self._slice(act_addr, count, act_signed, act_zero_point))
        pending.ws.append(self.tile)

    def _slice(self, act_addr: int, count: int, signed: int, zero_point: int) -> tuple[np.ndarray, int]:
        key = (act_addr, count, signed, zero_point)
        if key not in self.slices:
            entries = self.act[act_addr:act_addr + count]
            self.slices[key] = as_unsigned(entries.view(np.int8) if signed else entries.copy(), zero_point)
        return self.slices[key]

    def settle(self, start: int, count: int, keep: tuple[int, int] | None = None) -> None:
        """Add the pending products of every range overlapping ``start .. start + count - 1`` (but ``keep``),
        together with the ranges that share their activations."""
        groups: dict[tuple, list] = {}
        for key, pending in self.pending.items():
            if key != keep:
                groups.setdefault(tuple(map(id, pending.xs)), []).append(key)
        crowded = len(self.pending) > _MAX_PENDING
        for group in groups.values():
            if crowded or any(key[0] < start + count and start < key[0] + key[1] for key in group):
                self._add_products(group)

    def _add_products(self, keys: list[tuple[int, int]]) -> None:
        """One matrix product for ranges that share their activations: their weights side by side."""
        ranges = [self.pending.pop(key) for key in keys]
        values, zero_points = zip(*ranges[0].xs)
        if len(set(zero_points)) == 1:
            zero_points = zero_points[0]
        else:
            zero_points = np.repeat(zero_points, self.config.rows)
        w = np.concatenate([np.concatenate(r.ws) for r in ranges], axis=1)
        products = centred_matmul(np.concatenate(values, axis=1), zero_points, w)
        cols = self.config.cols
        for i, ((start, count), pending) in enumerate(zip(keys, ranges)):
            part = products[:, i * cols:(i + 1) * cols]
            rows = slice(start, start + count)
            self.acc[rows] = _wrap_int32(part if pending.fresh else self.acc[rows] + part)

    def store(self, acc_addr: int, count: int, dram_addr: int, dram_stride: int, param_addr: int, load_params: int,
              raw: int, float32_scale: int, out_zero_point: int, clamp_min: int, clamp_max: int, table_addr: int,
              load_table: int, lookup: int, add: int) -> None:
        cfg = self.config
        if load_params:
            block = self.memory[param_addr:param_addr + cfg.param_block_bytes]
            self.params = block.view(np.int32).reshape(3, cfg.cols).copy()
        if load_table:
            self.table = self.memory[table_addr:table_addr + TABLE_BYTES].copy()
        self.settle(acc_addr, count)
        rows = self.acc[acc_addr:acc_addr + count]
        if raw:
            out = rows.astype("<i4").view(np.uint8).reshape(count, -1)
        else:
            out = requantize(rows, self.params[0], self.params[1], self.params[2] & 63,
                             out_zero_point, clamp_min, clamp_max, float32_scale=bool(float32_scale))
            if add:
                block = param_addr + cfg.param_block_bytes
                residual = ResidualAdd.from_block(self.memory[block:block + ADD_BLOCK_BYTES])
                out = add_rows(residual, out, _read_rows(self.memory, dram_addr + residual.addend_offset, count,
                                                         dram_stride, cfg.cols))
            if lookup:
                out = self.table[out]
        _write_rows(self.memory, dram_addr, dram_stride, out)

    def stores(self, rows: list[tuple]) -> None:
        """A run of STOREs: their requantization as one computation, unless one of them loads a parameter
        block that an earlier one of the run writes, or they mix arithmetic, or use a table or an add (then one
        at a time)."""
        arithmetic = {row[_FLOAT32_SCALE] for row in rows if not row[_RAW]}  # of the requantizing STOREs
        tables = any(row[_LOAD_TABLE] or row[_LOOKUP] or row[_ADD] for row in rows)
        if len(rows) == 1 or self._writes_parameters(rows) or len(arithmetic) > 1 or tables:
            for row in rows:
                self.store(*row)
            return
        cfg, blocks, quantized = self.config, [], []
        for acc_addr, count, _, _, param_addr, load_params, raw, _, out_zero_point, clamp_min, clamp_max, *_ in rows:
            self.settle(acc_addr, count)
            if load_params:
                block = self.memory[param_addr:param_addr + cfg.param_block_bytes]
                self.params = block.view(np.int32).reshape(3, cfg.cols).copy()
            if not raw:
                blocks.append(self.params)
                quantized.append((acc_addr, count, out_zero_point, clamp_min, clamp_max))
        if quantized:
            counts = [count for _, count, *_ in quantized]
            per_row = np.repeat(np.arange(len(quantized)), counts)
            params = np.stack(blocks)[per_row]
            limits = np.array([q[2:] for q in quantized])[per_row]
            acc = np.concatenate([self.acc[start:start + count] for start, count, *_ in quantized])
            outs = iter(np.split(requantize(acc, params[:, 0], params[:, 1], params[:, 2] & 63, limits[:, :1],
                                            limits[:, 1:2], limits[:, 2:], float32_scale=bool(arithmetic.pop())),
                                 np.cumsum(counts)[:-1]))
        for acc_addr, count, dram_addr, dram_stride, _, _, raw, *_ in rows:
            out = self.acc[acc_addr:acc_addr + count].astype("<i4").view(np.uint8).reshape(count, -1) if raw \
                else next(outs)
            _write_rows(self.memory, dram_addr, dram_stride, out)

    def _writes_parameters(self, rows: list[tuple]) -> bool:
        """Whether a STORE of ``rows`` loads a parameter block that an earlier one writes to."""
        cfg = self.config
        acc_addr, count, dram_addr, dram_stride, param_addr, load_params, raw, *_ = map(np.array, zip(*rows))
        written_end = dram_addr + (count - 1) * dram_stride + np.where(raw != 0, cfg.acc_entry_bytes, cfg.cols)
        overlap = (param_addr[:, None] < written_end) & (dram_addr < param_addr[:, None] + cfg.param_block_bytes)
        return bool((np.tril(overlap, -1) & (load_params[:, None] != 0)).any())


def _counters(config: HardwareConfig, columns: dict[str, np.ndarray]) -> dict[str, int]:
    opcode = columns["opcode"]
    computes = opcode == Opcode.COMPUTE
    return {"load": int((opcode == Opcode.LOAD).sum()), "compute": int(computes.sum()),
            "store": int((opcode == Opcode.STORE).sum()),
            "macs": int(columns["count"][computes].sum()) * config.rows * config.cols}


@dataclass
class _Segment:
    """Instructions between SYNCs: their decoded columns and their plan (``None``: interpret them)."""

    columns: dict[str, np.ndarray]
    plan: ExecutionPlan | None


#: The kinds of on-chip state, each with the instructions that set it (in part or whole).
_SETTERS = {
    "act": lambda c: (c["opcode"] == Opcode.LOAD) & (c["buffer"] == Buffer.ACT),
    "wgt": lambda c: (c["opcode"] == Opcode.LOAD) & (c["buffer"] == Buffer.WGT),
    "acc": lambda c: c["opcode"] == Opcode.COMPUTE,
    "tile": lambda c: (c["opcode"] == Opcode.COMPUTE) & (c["preload"] != 0),
    "params": lambda c: (c["opcode"] == Opcode.STORE) & (c["load_params"] != 0),
    "table": lambda c: (c["opcode"] == Opcode.STORE) & (c["load_table"] != 0),
}
#: The kinds that each setting replaces whole.
_WHOLE = {"tile", "params", "table"}


def _sets(columns: dict[str, np.ndarray]) -> set[str]:
    """The kinds of on-chip state that instructions ``columns`` set."""
    return {kind for kind, setters in _SETTERS.items() if setters(columns).any()}


def _reads_earlier(config: HardwareConfig, columns: dict[str, np.ndarray]) -> set[str]:
    """The kinds of on-chip state that instructions ``columns`` read where they did not set it first: entries of
    a buffer, accumulator rows, the weight tile, the parameter block or the table."""
    loaded = {Buffer.ACT: np.zeros(config.act_depth, bool), Buffer.WGT: np.zeros(config.wgt_depth, bool)}
    computed = np.zeros(config.acc_depth, bool)
    tile = params = table = False
    reads = set()
    names = ("opcode", "buffer", "sram_addr", "count", "act_addr", "acc_addr", "wgt_addr", "preload", "accumulate",
             "load_params", "raw", "load_table", "lookup")
    for op, buffer, sram_addr, count, act_addr, acc_addr, wgt_addr, preload, accumulate, load_params, raw, \
            load_table, lookup in zip(*(columns[name].tolist() for name in names)):
        if op == Opcode.LOAD:
            loaded[buffer][sram_addr:sram_addr + count] = True
        elif op == Opcode.COMPUTE:
            if preload and not loaded[Buffer.WGT][wgt_addr:wgt_addr + config.rows].all():
                reads.add("wgt")
            tile |= bool(preload)
            if not tile:
                reads.add("tile")
            if not loaded[Buffer.ACT][act_addr:act_addr + count].all():
                reads.add("act")
            if accumulate and not computed[acc_addr:acc_addr + count].all():
                reads.add("acc")
            computed[acc_addr:acc_addr + count] = True
        elif op == Opcode.STORE:
            params, table = params or bool(load_params), table or bool(load_table)
            reads.update(kind for kind, used in (("params", not raw and not params), ("table", lookup and not table),
                                                 ("acc", not computed[acc_addr:acc_addr + count].all())) if used)
    return reads


def _segments(config: HardwareConfig, columns: dict[str, np.ndarray], program_bytes: tuple[int, int],
              memory: np.ndarray) -> list[_Segment]:
    """The program cut at its SYNCs, each part planned on its own where that runs it exactly.

    SYNC waits until the units drain, so the parts run one after another, each seeing the memory the earlier
    ones wrote (a layer's LOADs read the rows the previous layer's STOREs wrote, which a plan of the whole program
    could not express). On-chip state also crosses a SYNC: buffer entries, accumulators, the weight tile, the
    parameter block, the table. The first part starts on a reset machine, as a whole program does; a later part
    is planned only where it reads none of the state before it (``build_plan``'s ``before``). Parts without a plan
    are interpreted in order on one machine, which plans never update. So an interpreted part must not read state
    that a planned part set: going from the last part to the first, ``needed`` holds the kinds of state that later
    interpreted parts read from before them; a part that sets one of those kinds is interpreted too (its own
    reads then needed), and a part that replaces a kind whole (the tile, the parameter block, the table) settles
    it for the parts before. A program without SYNCs is one part, planned as it always was; so is a program with
    SYNCs whose parts are not all planned where the whole program has a plan (parts that share state, but none
    that stores what another reads).
    """
    opcode = columns["opcode"]
    syncs = np.flatnonzero(opcode == Opcode.SYNC).tolist()
    bounds = [(start, end) for start, end in zip([0, *(s + 1 for s in syncs)], [*syncs, opcode.size]) if end > start]
    if len(bounds) == 1 and bounds[0] == (0, opcode.size):
        return [_Segment(columns, build_plan(config, columns, program_bytes, memory))]
    parts = [{name: values[start:end] for name, values in columns.items()} for start, end in bounds]
    plans = [build_plan(config, part, program_bytes, memory,
                        None if start == 0 else {name: values[:start] for name, values in columns.items()})
             for part, (start, _) in zip(parts, bounds)]
    needed: set[str] = set()
    for index in reversed(range(len(parts))):
        sets = _sets(parts[index])
        if plans[index] is not None and not sets & needed:
            continue
        plans[index] = None
        needed = needed - (sets & _WHOLE) | _reads_earlier(config, parts[index])
    if None in plans:  # SYNC changes nothing in program order: a plan of the whole, where one exists, is exact
        whole = build_plan(config, columns, program_bytes, memory)
        if whole is not None:
            return [_Segment(columns, whole)]
    return [_Segment(part, plan) for part, plan in zip(parts, plans)]


@dataclass
class _Prepared:
    """A checked program, kept with the program for its next run: its instructions (to see that they are
    unchanged), the memory size it was checked against, its counters and its parts between SYNCs with their
    plans."""

    config: HardwareConfig
    instructions: np.ndarray
    memory_size: int
    columns: dict[str, np.ndarray]
    counters: dict[str, int]
    segments: list[_Segment]

    @property
    def plan(self) -> ExecutionPlan | None:
        """The plan of a program without SYNCs (``None``: interpreted, or cut at SYNCs into several parts)."""
        return self.segments[0].plan if len(self.segments) == 1 else None

    def matches(self, config: HardwareConfig, program: Program) -> bool:
        data = program.memory.data
        return (config == self.config and data.size == self.memory_size
                and same_bytes(data[program.address:program.address + self.instructions.size], self.instructions))


class ReferenceExecutor:
    """Runs programs by the book: the effect of each instruction in program order, on numpy buffers.

    The hardware overlaps its units; a correct program's dependency tokens
    make that overlap invisible, so results are identical bit for bit. A
    program is checked and traced into an :class:`~mvu.host.executors.execution_plan.ExecutionPlan`
    on its first run; later runs of the unchanged program reuse both. A plan's packed weights are compared with
    the memory's on every run, or only on the run that packs them where the program's notes say
    :data:`~mvu.host.executors.FIXED_WEIGHTS`.
    """

    name = "reference"
    _NOTE = "reference executor"  # where a program keeps what its first run prepared

    def __init__(self, config: HardwareConfig):
        self.config = config
        self.engine = engine_name()  # set up here, not in the first timed run

    #: Programs for the reference are tiled for the memory port's full width.
    memory_bytes_per_cycle = None

    def run(self, program: Program) -> RunResult:
        start = time.perf_counter()
        prepared = self._prepare(program)
        data, machine, fixed = program.memory.data, None, bool(program.notes.get(FIXED_WEIGHTS))
        for segment in prepared.segments:
            if segment.plan is not None:
                segment.plan.run(data, fixed_weights=fixed)
                continue
            machine = self._interpret(segment.columns, data, machine)
        return RunResult(backend=self.name, wall_seconds=time.perf_counter() - start,
                         instructions=program.length, counters=dict(prepared.counters))

    def _prepare(self, program: Program) -> _Prepared:
        prepared = program.notes.get(self._NOTE)
        if prepared is not None and prepared.matches(self.config, program):
            return prepared
        data = program.memory.data
        columns = check_program(self.config, data, program.address, program.length)
        size = program.length * INSTRUCTION_BYTES
        prepared = _Prepared(self.config, data[program.address:program.address + size].copy(), data.size, columns,
                             _counters(self.config, columns),
                             _segments(self.config, columns, (program.address, size), data))
        program.notes[self._NOTE] = prepared
        return prepared

    def _interpret(self, columns: dict[str, np.ndarray], memory: np.ndarray, machine: _Machine | None = None
                   ) -> _Machine:
        """Run ``columns`` one instruction at a time on ``machine`` (a reset one on ``memory`` by default), which
        they leave as the hardware would."""
        machine = machine or _Machine(self.config, memory)
        handlers = {Opcode.LOAD: machine.load, Opcode.COMPUTE: machine.compute}
        for opcode, rows in _runs(columns):
            if opcode == Opcode.STORE:
                machine.stores(rows)
            elif opcode in handlers:
                handler = handlers[opcode]
                for row in rows:
                    handler(*row)
        return machine
