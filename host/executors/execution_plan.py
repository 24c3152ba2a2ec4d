"""Execution plans for the reference executor: a program traced once, then run as a few bulk matrix products.

Tracing walks the instructions with addresses in place of data: each SRAM
entry remembers the DRAM address it was loaded from, each accumulator range
the (activation rows, weight tile) pairs summed into it, and each STORE the
sums it writes out. Where the program never writes what it reads (its loads,
parameter blocks and instructions), the bytes a load brings in are still in
memory when the plan reads them, so the program's whole effect is a set of
matrix products read straight from memory. Products that share their
activations, or their weights over adjacent rows, merge into one; stores that
tile a row-major output become one write. Window LOADs read scratch matrices
that one gather per run fills from memory (:mod:`~mvu.host.executors.window_gather`).

Programs the plan cannot express this way (a store that overwrites what is
read, accumulator ranges used in part, entries read before they are loaded)
get ``None`` from :func:`build_plan`, and the executor interprets them.

A plan starts from a reset machine (accumulators zero, no parameter block or
table loaded), or, for the part of a program after a SYNC, from state it does
not know: then it is built only where the part sets all it reads itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import TABLE_BYTES, Opcode
from mvu.hdl.contract.residual_add import ADD_BLOCK_BYTES, ResidualAdd
from mvu.host.executors.fused_products import FusedProduct, fused_product
from mvu.host.executors.intmatmul import as_unsigned, centred_matmul
from mvu.host.executors.kernels import diagonal_maxima, diagonal_sums, same_bytes
from mvu.host.executors.requantize import requantize_rows
from mvu.host.executors.residual_add import add_rows
from mvu.host.executors.window_gather import SCRATCH_BASE, WindowGather, layout_windows

__all__ = ["ExecutionPlan", "build_plan"]


class _Rows(NamedTuple):
    """``count`` rows of ``width`` bytes in memory, ``step`` bytes apart from ``start``."""

    start: int
    count: int
    width: int
    step: int

    def view(self, memory: np.ndarray) -> np.ndarray:
        """The rows as a [count, width] view of ``memory`` (bytes); the plan's checks keep it in bounds."""
        return np.ndarray((self.count, self.width), np.uint8, memory, self.start, (self.step, 1))

    def write(self, memory: np.ndarray, values: np.ndarray) -> None:
        self.view(memory)[:] = values


class _Term(NamedTuple):
    """One COMPUTE's product: activation rows (signed or not, with a zero point) times a weight tile; kept where it
    is larger than the range's other terms (``maximum``) instead of added to them."""

    act: _Rows
    wgt: _Rows
    signed: bool
    zero_point: int
    maximum: bool = False


@dataclass(frozen=True)
class _Store:
    terms: tuple[_Term, ...]
    rows: int
    dram_addr: int
    dram_stride: int
    raw: bool
    float32_scale: bool
    params: int | None  # address of the parameter block in force (None: never loaded, all zero)
    out_zero_point: int
    clamp_min: int
    clamp_max: int
    table: int | None = None  # address of the lookup table applied to the bytes (None: no lookup)
    add: bool = False  # the add block after the parameter block adds an addend before the lookup


@dataclass
class _Product:
    """``(act - zero point) @ wgt`` over whole operands; ``act`` and ``wgt`` are lists of parts side by side
    (along K for ``act`` and down K for ``wgt``, paired), or single views; ``blocks`` say where each store's
    rows and columns lie in the result."""

    act: list[tuple[_Rows, bool, int]]  # (rows, signed, zero point) per K part
    wgt: list[list[_Rows]]              # [K part][column part]
    blocks: list[tuple[int, int, _Store]]  # (first row, first column, store)
    output: tuple[_Rows, tuple] | None = None  # one write for all blocks: where, and each column tile's params
    maximum: bool = False  # the K parts' products are not summed: each output keeps the largest


class ExecutionPlan:
    """A traced program's effect as bulk steps; :meth:`run` applies it to a memory image.

    Products written out by one float32-scale store per column tile run as a
    :class:`~mvu.host.executors.fused_products.FusedProduct` each, packed on first use and
    repacked when the memory's weights or parameters change: parameters are compared on every run, weights too
    unless the caller vouches that they are fixed (``fixed_weights``: then only on the run that packs them, and
    when the memory is another buffer).
    """

    def __init__(self, config: HardwareConfig, products: list[_Product], windows: WindowGather | None = None):
        self.config, self.products, self.windows = config, products, windows
        # per fusable product: its FusedProduct and the parameter block bytes it was packed with
        self._fused: dict[int, tuple[FusedProduct, np.ndarray] | None] = {
            i: None for i, p in enumerate(products) if _fusable(p)}
        self._buffer: int | None = None  # the address of the memory the last run read

    def run(self, memory: np.ndarray, *, fixed_weights: bool = False) -> None:
        """Apply the plan to ``memory``; ``fixed_weights``: its weights are those of the last run (trusted only on
        the same memory buffer as that run's)."""
        buffer, self._buffer = self._buffer, memory.ctypes.data
        fixed_weights = fixed_weights and buffer == self._buffer
        scratch = None if self.windows is None else self.windows.gather(memory)
        for index, product in enumerate(self.products):
            if index in self._fused and self._run_fused(memory, scratch, index, product, fixed_weights):
                continue
            acc = self._multiply(memory, scratch, product)
            if product.output is not None:
                where, columns = product.output
                self._store(memory, acc, product.blocks[0][2], columns, where)
                continue
            for row, column, store in product.blocks:
                block = acc[row:row + store.rows, column:column + self.config.cols]
                width = block.shape[1] * (4 if store.raw else 1)
                self._store(memory, block, store, (store.params,), _Rows(store.dram_addr, store.rows, width,
                                                                        store.dram_stride))

    def _run_fused(self, memory: np.ndarray, scratch: np.ndarray | None, index: int, product: _Product,
                   fixed_weights: bool) -> bool:
        """Run a fusable product as a :class:`FusedProduct`; ``False`` where onnxruntime cannot (never again
        tried for this product: that depends only on the instructions and the machine). Its packed weights are
        compared with the memory's unless ``fixed_weights``."""
        where, blocks = product.output
        store = product.blocks[0][2]
        rows, signed, zero_point = product.act[0]
        w = product.wgt[0][0].view(memory).view(np.int8)
        raw = self._parameter_bytes(memory, blocks)
        packed = self._fused[index]
        if packed is None or not (same_bytes(raw, packed[1]) and (fixed_weights or packed[0].same_weights(w))):
            fused = fused_product(
                w, self._parameters(raw, w.shape[1]), act_signed=signed, act_zero_point=zero_point,
                out_zero_point=store.out_zero_point, clamp_min=store.clamp_min, clamp_max=store.clamp_max)
            if fused is None:
                del self._fused[index]
                return False
            packed = self._fused[index] = (fused, raw.copy())
        fused = packed[0]
        fused.run(_activations(memory, scratch, rows), where.view(memory))
        self._residual(memory, store, blocks, where)
        _look_up(memory, store, where)
        return True

    @staticmethod
    def _multiply(memory: np.ndarray, scratch: np.ndarray | None, product: _Product) -> np.ndarray:
        w = _weights(memory, product.wgt)
        diagonals = _diagonals(w)
        kinds = {(rows.count, rows.width, signed, zero_point) for rows, signed, zero_point in product.act}
        diagonal = diagonals is not None and len(product.act) == len(diagonals) and len(kinds) == 1 \
            and next(iter(kinds))[1] == w.shape[1]  # one n-wide part per diagonal block, all alike
        if product.maximum:
            return _largest_products(memory, scratch, product.act, w, diagonals if diagonal else None)
        if diagonal:
            return diagonal_sums(*_taps(memory, scratch, product.act), diagonals)
        parts, zero_points = [], []
        for rows, signed, zero_point in product.act:
            values = _activations(memory, scratch, rows)
            values, zero_point = as_unsigned(values.view(np.int8) if signed else values, zero_point)
            parts.append(values)
            zero_points.append(np.full(rows.width, zero_point))
        a = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        zero_point = zero_points[0][0] if len({int(z[0]) for z in zero_points}) == 1 \
            else np.concatenate(zero_points)
        return centred_matmul(a, zero_point, w)

    def _store(self, memory: np.ndarray, acc: np.ndarray, store: _Store, blocks: tuple, where: _Rows) -> None:
        """Write what a store writes to ``where``: raw int32, or requantized with each column tile's
        parameter block (``blocks``: their addresses, ``None`` for never loaded)."""
        if store.raw:
            where.write(memory, np.ascontiguousarray(acc, dtype="<i4").view(np.uint8))
            return
        bias, multiplier, shift = self._parameters(self._parameter_bytes(memory, blocks), acc.shape[1])
        requantize_rows(acc, bias, multiplier, shift & 63, store.out_zero_point, store.clamp_min, store.clamp_max,
                        float32_scale=store.float32_scale, out=where.view(memory))
        self._residual(memory, store, blocks, where)
        _look_up(memory, store, where)

    def _residual(self, memory: np.ndarray, store: _Store, blocks: tuple, where: _Rows) -> None:
        """Add the addends of an ``add`` store to the bytes it wrote at ``where``, with each column tile's add
        block (after its parameter block ``blocks``), all at once where the tiles' add blocks are one."""
        if not store.add:
            return
        cols, first = self.config.cols, self.config.param_block_bytes
        raw = memory[np.add.outer(np.array(blocks, np.int64) + first, np.arange(ADD_BLOCK_BYTES))]
        adds = [_add_of(raw[0].tobytes())] if (raw == raw[0]).all() else [_add_of(row.tobytes()) for row in raw]
        tiles = [(where, adds[0])] if len(set(adds)) == 1 else [
            (where._replace(start=where.start + t * cols, width=min(cols, where.width - t * cols)), add)
            for t, add in enumerate(adds)]
        for rows, add in tiles:
            written = rows.view(memory)
            add_rows(add, written, rows._replace(start=rows.start + add.addend_offset).view(memory), out=written)

    def _parameter_bytes(self, memory: np.ndarray, blocks: tuple) -> np.ndarray:
        """Column tiles' parameter blocks (``blocks``: their addresses, ``None`` for never loaded: all zero) side by
        side: a view of memory where they follow each other."""
        size = self.config.param_block_bytes
        if _consecutive(blocks, size):
            return memory[blocks[0]:blocks[0] + len(blocks) * size]
        return np.concatenate([np.zeros(size, np.uint8) if address is None else memory[address:address + size]
                               for address in blocks])

    def _parameters(self, raw: np.ndarray, channels: int) -> np.ndarray:
        """Bias, multiplier and shift rows [3, channels] from column tiles' parameter blocks side by side."""
        tiles = raw.view(np.int32).reshape(-1, 3, self.config.cols)
        return tiles.transpose(1, 0, 2).reshape(3, -1)[:, :channels]


@lru_cache(maxsize=4096)
def _consecutive(blocks: tuple, size: int) -> bool:
    """Whether parameter block addresses follow each other ``size`` bytes apart (a plan's are fixed: cached)."""
    first = blocks[0]
    return first is not None and blocks == tuple(range(first, first + len(blocks) * size, size))


@lru_cache(maxsize=1024)
def _add_of(block: bytes) -> ResidualAdd:
    """The add an add block's bytes hold, parsed once per distinct bytes (an add is immutable)."""
    return ResidualAdd.from_block(np.frombuffer(block, np.uint8))


def _diagonals(w: np.ndarray) -> np.ndarray | None:
    """The diagonals ``[T, n]`` of weights ``[T * n, n]`` made of T diagonal blocks (a depthwise program's), else
    ``None``; dense weights are told by their first block."""
    n = w.shape[1]
    if n < 2 or w.shape[0] % n:
        return None
    blocks = w.reshape(-1, n, n)
    diagonals = np.diagonal(blocks, axis1=1, axis2=2)
    if np.count_nonzero(blocks[0]) != np.count_nonzero(diagonals[0]):
        return None
    return diagonals if np.count_nonzero(blocks) == np.count_nonzero(diagonals) else None


def _largest_products(memory: np.ndarray, scratch: np.ndarray | None, act: list, w: np.ndarray,
                      diagonals: np.ndarray | None) -> np.ndarray:
    """Each output's largest K part product (COMPUTE's ``maximum``): elementwise for diagonal tiles (max pooling's
    unit tiles), else a product per part."""
    if diagonals is not None:
        taps, zero_point = _taps(memory, scratch, act)
        return diagonal_maxima(taps, zero_point, diagonals)
    largest, start = None, 0
    for rows, signed, zero_point in act:
        values = _activations(memory, scratch, rows)
        part = centred_matmul(*as_unsigned(values.view(np.int8) if signed else values, zero_point),
                              w[start:start + rows.width]).astype(np.int32)
        largest = part if largest is None else np.maximum(largest, part)
        start += rows.width
    return largest


@lru_cache(maxsize=4096)
def _spacing(parts: tuple[_Rows, ...]) -> int | None:
    """How far apart parts lie where each is the one before it moved on by that many bytes (a plan's parts are
    fixed: cached), else ``None``."""
    first = parts[0]
    spacing = (parts[-1].start - first.start) // max(len(parts) - 1, 1)
    even = spacing >= 0 and all(rows == first._replace(start=first.start + t * spacing) for t, rows in enumerate(parts))
    return spacing if even else None


def _weights(memory: np.ndarray, wgt: list[list[_Rows]]) -> np.ndarray:
    """A product's weights ``[K, N]`` (int8) from its K parts of column parts: one strided view where the K parts
    are single and evenly spaced (a view where there is one), else their concatenation."""
    if len(wgt) > 1 and all(len(row) == 1 for row in wgt):
        parts = tuple(row[0] for row in wgt)
        spacing = _spacing(parts)
        if spacing is not None:
            first = parts[0]
            tiles = np.ndarray((len(parts), first.count, first.width), np.uint8, memory, first.start,
                               (spacing, first.step, 1))
            return tiles.reshape(-1, first.width).view(np.int8)
    w = [np.concatenate([p.view(memory) for p in row], axis=1) if len(row) > 1 else row[0].view(memory)
         for row in wgt]
    return (w[0] if len(w) == 1 else np.concatenate(w)).view(np.int8)


def _taps(memory: np.ndarray, scratch: np.ndarray | None, act: list) -> tuple[np.ndarray, int]:
    """K parts of one row count, signedness and zero point as ``[parts, rows, width]`` uint8 and the zero point:
    one strided view where the parts lie evenly spaced in one buffer (window LOADs' scratch rows), else a copy."""
    (first, signed, zero_point), last = act[0], act[-1][0]
    spacing = _spacing(tuple(rows for rows, _, _ in act))
    if spacing is not None and (first.start < SCRATCH_BASE) == (last.start < SCRATCH_BASE):
        buffer, start = (memory, first.start) if first.start < SCRATCH_BASE else (scratch, first.start - SCRATCH_BASE)
        taps = np.ndarray((len(act), first.count, first.width), np.uint8, buffer, start, (spacing, first.step, 1))
    else:
        taps = np.stack([_activations(memory, scratch, rows) for rows, _, _ in act])
    return as_unsigned(taps.view(np.int8) if signed else taps, zero_point)


def _look_up(memory: np.ndarray, store: _Store, where: _Rows) -> None:
    """Replace the bytes a lookup store wrote at ``where`` by their entries in its table."""
    if store.table is not None:
        written = where.view(memory)
        np.take(memory[store.table:store.table + TABLE_BYTES], written, out=written)


def _activations(memory: np.ndarray, scratch: np.ndarray | None, rows: _Rows) -> np.ndarray:
    """Activation rows: from memory, or from the scratch rows window LOADs gathered for this run."""
    if rows.start < SCRATCH_BASE:
        return rows.view(memory)
    return rows._replace(start=rows.start - SCRATCH_BASE).view(scratch)


def _fusable(product: _Product) -> bool:
    """Whether a product has the shape of a :class:`FusedProduct`: one activation operand, one weight
    matrix contiguous in memory, one float32-scale write of all its columns."""
    if product.output is None or len(product.act) != 1 or len(product.wgt) != 1 or len(product.wgt[0]) != 1:
        return False
    weights, store = product.wgt[0][0], product.blocks[0][2]
    return store.float32_scale and not store.raw and (weights.step == weights.width or weights.count == 1)


# Tracing ------------------------------------------------------------------

class _Unplannable(Exception):
    """The program does something a plan does not express; the interpreter runs it."""


class _Entries:
    """Which LOAD filled each entry of an on-chip buffer, and so the address each entry came from."""

    def __init__(self, depth: int, width: int):
        self.width = width
        self.load = [-1] * depth  # index into ``self.loads``; -1: never loaded
        self.loads: list[tuple[int, int, int]] = []  # (first entry, DRAM address, stride)
        self.broken: set[int] = set()  # LOADs whose entries were since overwritten in part

    def fill(self, entry: int, count: int, dram_addr: int, stride: int) -> None:
        end = entry + count
        # Only the LOADs at either end can keep entries outside the new range.
        self.broken.update(load for load in (self.load[entry], self.load[end - 1]) if load >= 0)
        self.load[entry:end] = [len(self.loads)] * count
        self.loads.append((entry, dram_addr, stride))

    def rows(self, entry: int, count: int) -> _Rows:
        """Where entries ``entry .. entry + count - 1`` came from, as evenly spaced rows."""
        load = self.load[entry]
        if load >= 0 and self.load[entry + count - 1] == load and (
                load not in self.broken or self.load[entry:entry + count].count(load) == count):
            first, dram_addr, stride = self.loads[load]  # one LOAD filled them all
            return _Rows(dram_addr + (entry - first) * stride, count, self.width, stride if count > 1 else self.width)
        addresses = [-1 if load < 0 else self.loads[load][1] + (e - self.loads[load][0]) * self.loads[load][2]
                     for e, load in enumerate(self.load[entry:entry + count], entry)]
        first = addresses[0]
        step = addresses[1] - first if count > 1 else self.width
        if first < 0 or step < 0 or addresses != [first + step * i for i in range(count)]:
            raise _Unplannable("entries are not loaded, or come from rows that are not evenly spaced")
        return _Rows(first, count, self.width, step)


def _intervals(starts: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(starts, kind="stable")
    return starts[order], starts[order] + widths[order]


def _overlaps(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    """Whether any interval of ``a`` meets any of ``b`` (``b`` sorted and disjoint)."""
    starts, ends = a
    b_starts, b_ends = b
    if not b_starts.size or not starts.size:
        return False
    index = np.searchsorted(b_ends, starts, side="right")
    inside = index < b_starts.size
    return bool((b_starts[np.minimum(index, b_starts.size - 1)] < ends)[inside].any())


def _expand(rows: list[tuple[int, int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Every row of ``(start, count, width, step)`` runs as ``(starts, widths)``."""
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    start, count, width, step = (np.array(c, dtype=np.int64) for c in zip(*rows))
    run = np.repeat(np.arange(len(rows)), count)
    within = np.arange(run.size) - np.repeat(np.cumsum(count) - count, count)
    return start[run] + within * step[run], width[run]


_ZERO, _UNKNOWN = -1, -2  # accumulator rows never written, and rows the trace lost track of


def _trace(config: HardwareConfig, columns: dict[str, np.ndarray], reset: bool) -> tuple[list[_Store], list, list]:
    """The program's stores with their sums, and the memory rows it reads and writes. ``reset``: the program starts
    on a reset machine (accumulators zero, no parameter block or table); otherwise what it reads of the machine's
    state, it must have set itself."""
    R, C = config.rows, config.cols
    act, wgt = _Entries(config.act_depth, R), _Entries(config.wgt_depth, C)
    owner = [_ZERO] * config.acc_depth  # first row of the live range holding each row
    live: dict[int, tuple[int, list[_Term]]] = {}
    tile: _Rows | None = None
    params: int | None = None
    table: int | None = None
    reads, writes, stores = [], [], []
    names = ("buffer", "sram_addr", "count", "dram_addr", "dram_stride", "act_addr", "acc_addr", "wgt_addr",
             "preload", "accumulate", "act_signed", "act_zero_point", "param_addr", "load_params", "raw",
             "float32_scale", "out_zero_point", "clamp_min", "clamp_max", "table_addr", "load_table", "lookup", "add",
             "maximum")
    rows = zip(columns["opcode"].tolist(), *(columns[name].tolist() for name in names))
    for (op, buffer, sram_addr, count, dram_addr, dram_stride, act_addr, acc_addr, wgt_addr, preload, accumulate,
         signed, zero_point, param_addr, load_params, raw, float32_scale, out_zero_point, clamp_min,
         clamp_max, table_addr, load_table, lookup, add, maximum) in rows:
        if op == Opcode.LOAD:
            entries = act if buffer == 0 else wgt
            entries.fill(sram_addr, count, dram_addr, dram_stride)
            reads.append((dram_addr, count, entries.width, dram_stride))
        elif op == Opcode.COMPUTE:
            if preload:
                tile = wgt.rows(wgt_addr, R)
            if tile is None:
                raise _Unplannable("a product uses the weight bank before any preload")
            term = _Term(act.rows(act_addr, count), tile, bool(signed), zero_point, bool(accumulate and maximum))
            whole = live.get(acc_addr, (0,))[0] == count
            if accumulate and whole:
                terms = live[acc_addr][1]
                if len(terms) > 1 and terms[-1].maximum != term.maximum:
                    raise _Unplannable("a range both adds and keeps the larger products")
                terms.append(term)
            elif not accumulate or owner[acc_addr:acc_addr + count].count(_ZERO) == count:
                if accumulate and (maximum or not reset):  # onto state before the program, or zero's maximum
                    raise _Unplannable("a product accumulates onto accumulators the program did not compute")
                for holder in set(owner[acc_addr:acc_addr + count]):
                    if holder >= 0:  # a range overwritten in part keeps values the plan does not follow
                        end = holder + live.pop(holder)[0]
                        owner[holder:end] = [_UNKNOWN if o == holder else o for o in owner[holder:end]]
                owner[acc_addr:acc_addr + count] = [acc_addr] * count
                live[acc_addr] = (count, [term])
            else:
                raise _Unplannable("a product accumulates onto part of a range")
        elif op == Opcode.STORE:
            if load_params:
                params = param_addr
                reads.append((param_addr, 1, config.param_block_bytes + (ADD_BLOCK_BYTES if add else 0), 0))
            if load_table:
                table = table_addr
                reads.append((table_addr, 1, TABLE_BYTES, 0))
            if not reset and ((params is None and not raw) or (table is None and lookup)):
                raise _Unplannable("a store uses a parameter block or table loaded before the program")
            if live.get(acc_addr, (0,))[0] == count:
                terms = tuple(live[acc_addr][1])
            elif owner[acc_addr:acc_addr + count].count(_ZERO) == count:
                terms = ()
            else:
                raise _Unplannable("a store reads accumulator ranges in part")
            stores.append(_Store(terms, count, dram_addr, dram_stride, bool(raw), bool(float32_scale and not raw),
                                 params if not raw else None, out_zero_point, clamp_min, clamp_max,
                                 table if lookup else None, bool(add)))
            writes.append((dram_addr, count, 4 * C if raw else C, dram_stride))
    return stores, reads, writes


# Merging ------------------------------------------------------------------

def _joined(parts: list[_Rows], along_rows: bool) -> _Rows | None:
    """One view for views that continue each other: down the rows, or across the columns."""
    first, total = parts[0], 0
    for part in parts:
        if along_rows:
            continues = part.start == first.start + total * first.step and (part.width, part.step) == (
                first.width, first.step)
            total += part.count
        else:
            continues = part.start == first.start + total and (part.count, part.step) == (first.count, first.step)
            total += part.width
        if not continues:
            return None
    if along_rows:
        return _Rows(first.start, total, first.width, first.step)
    return _Rows(first.start, first.count, total, first.step)


def _store_operands(store: _Store) -> tuple[tuple, list[_Rows]]:
    """A store's activations as K parts ``(rows, signed, zero point)`` and its weights as K parts, with
    adjacent parts joined where they are summed; terms are taken in address order (their sum, or their largest,
    is the same in any order)."""
    terms = sorted(store.terms, key=lambda t: (t.act.start, t.wgt.start))
    act = [(t.act, t.signed, t.zero_point) for t in terms]
    wgt = [t.wgt for t in terms]
    if len({(signed, zero_point) for _, signed, zero_point in act}) == 1 and not _keeps_largest(store):
        joined_act = _joined([rows for rows, _, _ in act], along_rows=False)
        joined_wgt = _joined(wgt, along_rows=True)
        if joined_act is not None and joined_wgt is not None:
            return ((joined_act, act[0][1], act[0][2]),), [joined_wgt]
    return tuple(act), wgt


def _keeps_largest(store: _Store) -> bool:
    """Whether a store's range keeps its terms' largest product (COMPUTE's ``maximum``) rather than their sum."""
    return any(term.maximum for term in store.terms)


def _products(config: HardwareConfig, stores: list[_Store]) -> list[_Product]:
    """Stores grouped into as few products as their operands allow."""
    # Stores with the same activations (and reduction): one product, their weights side by side.
    by_act: dict[tuple, list[tuple[list[_Rows], _Store]]] = {}
    for store in stores:
        if not store.terms:
            continue
        act, wgt = _store_operands(store)
        by_act.setdefault((act, _keeps_largest(store)), []).append((wgt, store))
    products = []
    for (act, maximum), members in by_act.items():
        members.sort(key=lambda m: m[0][0].start)
        k_parts = len(act)
        columns = [[wgt[k] for wgt, _ in members] for k in range(k_parts)]
        joined = [_joined(column, along_rows=False) for column in columns]
        wgt = [[j] for j in joined] if all(j is not None for j in joined) else columns
        blocks = [(0, i * config.cols, store) for i, (_, store) in enumerate(members)]
        products.append(_Product(list(act), wgt, blocks, maximum=maximum))
    # Products with the same weights whose K parts all continue another's activation rows: one product.
    chains: list[list[_Product]] = []
    ends: dict[tuple, list[_Product]] = {}  # per kind of product and where its next rows would start: its chain
    for product in sorted(products, key=lambda p: p.act[0][0].start):
        kind = (str(product.wgt), tuple((signed, zero_point, rows.width, rows.step)
                                        for rows, signed, zero_point in product.act), product.maximum)
        chain = ends.pop((kind, tuple(rows.start for rows, _, _ in product.act)), None)
        if chain is None:
            chains.append(chain := [])
        chain.append(product)
        ends[(kind, tuple(rows.start + rows.count * rows.step for rows, _, _ in product.act))] = chain
    merged = []
    for chain in chains:
        first = chain[0]
        if len(chain) == 1:
            merged.append(first)
            continue
        offsets = np.cumsum([0] + [p.act[0][0].count for p in chain]).tolist()
        blocks = [(offset + row, column, store) for offset, p in zip(offsets, chain) for row, column, store in p.blocks]
        act = [(rows._replace(count=offsets[-1]), signed, zero_point) for rows, signed, zero_point in first.act]
        merged.append(_Product(act, first.wgt, blocks, maximum=first.maximum))
    for product in merged:
        product.output = _single_write(config, product)
    return merged


def _single_write(config: HardwareConfig, product: _Product) -> tuple[_Rows, tuple] | None:
    """One strided write for a product whose stores tile a row-major output with one requantization per
    column tile: the rows to write, and each column tile's parameter block."""
    blocks = product.blocks
    first = blocks[0][2]
    element = 4 if first.raw else 1
    origin = first.dram_addr - blocks[0][0] * first.dram_stride - blocks[0][1] * element
    params: dict[int, int | None] = {}
    for row, column, store in blocks:
        if (store.raw, store.float32_scale, store.out_zero_point, store.clamp_min, store.clamp_max,
                store.dram_stride, store.table, store.add) != (
                    first.raw, first.float32_scale, first.out_zero_point, first.clamp_min, first.clamp_max,
                    first.dram_stride, first.table, first.add):
            return None
        if store.dram_addr != origin + row * store.dram_stride + column * element:
            return None
        if params.setdefault(column, store.params) != store.params:
            return None
    rows = max(row + store.rows for row, _, store in blocks)
    columns = sorted(params)
    if columns != list(range(0, len(columns) * config.cols, config.cols)):
        return None
    covered = sum(store.rows for _, _, store in blocks)
    if covered != rows * len(columns) or origin < 0:
        return None
    width = len(columns) * config.cols * element
    if first.dram_stride < width:
        return None
    return _Rows(origin, rows, width, first.dram_stride), tuple(params[c] for c in columns)


def build_plan(config: HardwareConfig, columns: dict[str, np.ndarray], program_bytes: tuple[int, int],
               memory: np.ndarray | None = None, before: dict[str, np.ndarray] | None = None
               ) -> ExecutionPlan | None:
    """The plan for a checked program (its decoded ``columns``, its instructions at ``program_bytes`` =
    ``(address, size)``), or ``None`` when the interpreter must run it. STOREs that ``add`` need the ``memory``
    holding their add blocks (where their addends lie); the plan assumes the blocks stay as they are.

    ``before``: the instructions that run before these (a program's parts before this one's SYNC), leaving the
    machine in a state the plan does not know; it is planned only where it reads none of that state, and none of its add
    blocks is written by a STORE of ``before`` (its blocks are read from ``memory`` as it is now). ``None``: the
    program starts on a reset machine."""
    addend_reads = _addend_reads(config, columns, memory)
    if addend_reads is None:
        return None
    if before is not None and addend_reads and _stores_write(config, before, _add_blocks(config, columns)):
        return None  # an earlier part writes an add block: the plan would read it too soon
    windows, window_reads = None, []
    if columns["window"].any():
        laid_out = layout_windows(columns, config.rows)
        if laid_out is None:
            return None
        columns, windows, window_reads = laid_out
    try:
        stores, reads, writes = _trace(config, columns, reset=before is None)
    except _Unplannable:
        return None
    reads += window_reads + addend_reads
    written = _intervals(*_expand(writes))
    if written[0].size and (written[0][1:] < written[1][:-1]).any():
        return None  # stores overwrite each other: their order would matter
    read = _intervals(*_expand(reads + [(program_bytes[0], 1, program_bytes[1], 0)]))
    if _overlaps(read, written):
        return None  # a store changes what the program reads
    if any(not store.terms for store in stores):
        return None  # a store of accumulators nothing was added to: rare, left to the interpreter
    return ExecutionPlan(config, _products(config, stores), windows)


def _add_blocks(config: HardwareConfig, columns: dict[str, np.ndarray]) -> np.ndarray:
    """The distinct add blocks the ``add`` STOREs read, as their first bytes."""
    adds = (columns["opcode"] == Opcode.STORE) & (columns["add"] != 0)
    return np.unique(columns["param_addr"][adds].astype(np.int64) + config.param_block_bytes)


def _stores_write(config: HardwareConfig, columns: dict[str, np.ndarray], blocks: np.ndarray) -> bool:
    """Whether a STORE of ``columns`` writes a byte of the ``ADD_BLOCK_BYTES`` from each of ``blocks``: row ``k`` of
    a STORE lies at ``dram_addr + k * stride`` and meets a block from ``b`` where
    ``b - width < dram_addr + k * stride < b + ADD_BLOCK_BYTES``."""
    stores = columns["opcode"] == Opcode.STORE
    start, count, step = (columns[name][stores].astype(np.int64)[:, None] for name in ("dram_addr", "count",
                                                                                         "dram_stride"))
    width = np.where(columns["raw"][stores, None] != 0, 4 * config.cols, config.cols)
    low, high = blocks - width - start, blocks + ADD_BLOCK_BYTES - start  # k * step must lie strictly between
    spacing = np.maximum(step, 1)
    first, last = np.maximum(low // spacing + 1, 0), np.minimum(-(-high // spacing) - 1, count - 1)
    return bool(np.where(step > 0, first <= last, (low < 0) & (0 < high)).any())


def _addend_reads(config: HardwareConfig, columns: dict[str, np.ndarray], memory: np.ndarray | None) -> list | None:
    """The addend rows the ``add`` STOREs read, as ``(address, count, width, stride)``; ``None`` where some add but
    no ``memory`` says where their addends lie."""
    adds = np.flatnonzero((columns["opcode"] == Opcode.STORE) & (columns["add"] != 0))
    if adds.size and memory is None:
        return None
    reads = []
    for i in adds.tolist():
        block = int(columns["param_addr"][i]) + config.param_block_bytes
        offset = ResidualAdd.from_block(memory[block:block + ADD_BLOCK_BYTES]).addend_offset
        reads.append((int(columns["dram_addr"][i]) + offset, int(columns["count"][i]), config.cols,
                      int(columns["dram_stride"][i])))
    return reads
