"""A whole network as one program: the layers' programs linked into one memory image and one instruction stream.

Each layer's program (:class:`~mvu.host.gemm.GemmProgram` and its kinds, :class:`~mvu.host.global_pool.GlobalPoolProgram`)
is built and laid out on its own, as the runner makes it. Linking places every program's memory image in one image
(weights, parameters and tables once; each layer's output where its program put it) and rebinds each program's
memory to its place there, so that the programs still read their inputs and results where they always did. Their
instructions are relocated into one stream, a SYNC between layers: a layer's LOADs of its input read the rows its
producer's STOREs wrote, and a residual add's addend is its producer's output, so nothing crosses the host link
but the network's input (written into the first layer's activations) and its results (read from the last layer's
outputs). A layer's own activation and addend regions stay in the image unused (no arena reuse yet).

Linking needs the layouts to agree: a consumer reads its input with the row pitch its producer wrote it with (or
both are dense), which holds for every program kind where ``rows == cols``; otherwise, or where a host layer sits
between two programs, :func:`link` says why and the runner keeps one program per layer.

A channel Concat is done by addressing (:class:`Concat`): the linker lays out one buffer for a Concat and the
Concats it nests or begins, rows of their total channels; the STOREs of each part's producer write into its
channel slice and the LOADs of every reader of a part or a Concat read their slice, their addresses and strides
moved from the program's own row pitch to the buffer's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mvu.hdl.contract.isa import INSTRUCTION_BYTES, Buffer, Opcode, decode_columns, encode_columns
from mvu.hdl.contract.program import MemoryImage, Program
from mvu.hdl.contract.residual_add import ADD_BLOCK_BYTES, ResidualAdd
from mvu.host.gemm import ADDRESS_SPACE

__all__ = ["Concat", "Link", "NetworkProgram", "Region", "link"]

#: Per token kind: the (opcode, field) pairs that push it and those that pop it.
_TOKENS = {
    "load -> compute": ((Opcode.LOAD, "signal_compute"), (Opcode.COMPUTE, "wait_load")),
    "compute -> load": ((Opcode.COMPUTE, "signal_load"), (Opcode.LOAD, "wait_compute")),
    "compute -> store": ((Opcode.COMPUTE, "signal_store"), (Opcode.STORE, "wait_compute")),
    "store -> compute": ((Opcode.STORE, "signal_compute"), (Opcode.COMPUTE, "wait_store")),
}


@dataclass(frozen=True)
class Region:
    """Rows of a tensor in a program's memory: ``size`` bytes from ``start``, ``pitch`` bytes a row of which the
    first ``valid`` hold values (the rest padding)."""

    start: int
    size: int
    pitch: int
    valid: int

    def holds_like(self, other: Region) -> bool:
        """Whether reading this region's layout from the bytes ``other``'s layout wrote gives the same values: the
        same size and row pitch, or both dense."""
        return self.size == other.size and (self.pitch == other.pitch or (
            self.pitch == self.valid and other.pitch == other.valid))


def _regions(program) -> tuple[Region, Region, Region | None]:
    """A program's input, output and (with a residual add) addend regions."""
    activations = program._activation_region()
    conv = getattr(program, "conv", None)
    # Values per row: a product's K (its activation rows), a convolution's channels, a global pool's channels.
    valid = program.n if not hasattr(program, "conv") else program.k if conv is None else conv.x.shape[3]
    pitch = activations.shape[-1]
    element = 4 if program.requant is None else 1
    out_pitch = program._out_bytes // program.m
    output = Region(program.out_base, program._out_bytes, out_pitch, program.n * element)
    addend = None
    if getattr(program, "residual", None) is not None:
        addend = Region(program._addend_base, program._out_bytes, out_pitch, program.n)
    return Region(program._a_base, activations.nbytes, pitch, valid), output, addend


@dataclass(eq=False)
class Concat:
    """Tensors side by side along the channels, by addressing: ``parts`` in order, each the index of the link that
    writes it or another :class:`Concat`, with its channels."""

    layer: str
    parts: tuple[tuple[int | Concat, int], ...]

    @property
    def channels(self) -> int:
        return sum(channels for _, channels in self.parts)


@dataclass
class Link:
    """One layer's program in the network and where its operands come from: ``source`` and ``addend`` are the
    indices of the links whose outputs they read (``None``: the network's input, written by the host); a source
    may be a :class:`Concat` of them."""

    layer: str
    program: object
    source: int | Concat | None
    addend: int | None = None


@dataclass
class NetworkProgram:
    """The linked network: :attr:`program` runs every layer; ``links`` in order, their programs' memories now
    views of :attr:`program`'s image. Only :attr:`inputs` (links reading the network's input) need the host's
    ``load_activations`` before a run."""

    program: Program
    links: list[Link]
    layers: int  # SYNC-separated layer programs
    #: Per link whose output went into a Concat's buffer: its first byte in :attr:`program`'s image and the row pitch.
    placed: dict[int, tuple[int, int]] = dataclasses.field(default_factory=dict)

    @property
    def inputs(self) -> list[Link]:
        return [link for link in self.links if link.source is None]

    def result(self, index: int) -> np.ndarray:
        """What link ``index``'s program wrote (a copy where it is requantized), read where it wrote it; a link placed
        in a Concat's buffer: a read-only view of its slice, which shows what the network's latest run left there
        (however early in a batch it is asked for)."""
        program = self.links[index].program
        if index not in self.placed:
            return program.result(copy=program.requant is not None)
        start, pitch = self.placed[index]
        rows = self.program.memory.data[start:start + (program.m - 1) * pitch + program.n]
        return np.lib.stride_tricks.as_strided(rows, (program.m, program.n), (pitch, 1), writeable=False)


def _columns(program) -> dict[str, np.ndarray]:
    """A layer program's instructions, decoded."""
    words = program.program.memory.data[program.program.address:][:program.program.length * INSTRUCTION_BYTES]
    return decode_columns(words.reshape(-1, INSTRUCTION_BYTES))


@dataclass(frozen=True)
class _Move:
    """Instructions that touch ``region`` (LOADs or STOREs) made to touch the same rows and bytes at ``start``,
    ``pitch`` bytes a row (``None``: the region's own pitch)."""

    region: Region
    start: int
    pitch: int | None = None


def _entry_bytes(config, columns: dict[str, np.ndarray], loads: np.ndarray) -> np.ndarray:
    """Bytes of one entry of each instruction: a LOAD's buffer entry, a STORE's requantized or raw row."""
    load = np.where(columns["buffer"] == Buffer.ACT, config.act_entry_bytes, config.wgt_entry_bytes)
    return np.where(loads, load, np.where(columns["raw"] != 0, config.acc_entry_bytes, config.cols))


def _moved(columns: dict[str, np.ndarray], chosen: np.ndarray, move: _Move, entry: np.ndarray) -> str | None:
    """Point the ``chosen`` instructions at ``move``'s place; with a new pitch, each entry must lie within a row
    and each stride step whole rows (else why not)."""
    address = columns["dram_addr"]
    if move.pitch is None:
        address[chosen] = move.start + (address[chosen] - move.region.start)
        return None
    rows, byte = np.divmod(address[chosen] - move.region.start, move.region.pitch)
    if np.any(byte + entry[chosen] > move.region.pitch):
        return f"an entry crosses a row of {move.region.pitch} bytes"
    for name, used in (("dram_stride", columns["window"][chosen] | (columns["count"][chosen] > 1)),
                       ("row_stride", columns["window"][chosen])):
        steps = columns[name][chosen]
        if np.any((steps % move.region.pitch != 0) & (used != 0)):
            return f"a {name} is not whole rows of {move.region.pitch} bytes"
        columns[name][chosen] = steps // move.region.pitch * move.pitch
    address[chosen] = move.start + rows * move.pitch + byte
    return None


def _relocated(program, offset: int, loads_from: list[_Move], stores_to: list[_Move]) -> np.ndarray | str:
    """``program``'s instructions but its FINISH, their addresses moved by ``offset``; LOADs and STOREs inside a moved
    region (its addresses before the move) read and write its rows at their new place instead, or why they cannot."""
    columns = _columns(program)
    keep = columns["opcode"] != Opcode.FINISH
    columns = {name: values[keep].copy() for name, values in columns.items()}
    opcode = columns["opcode"]
    loads, stores = opcode == Opcode.LOAD, opcode == Opcode.STORE
    address = columns["dram_addr"]
    entry = _entry_bytes(program.config, columns, loads)
    chosen = [(loads if kind == "LOAD" else stores) & (address >= move.region.start)
              & (address < move.region.start + move.region.size)
              for kind, moves in (("LOAD", loads_from), ("STORE", stores_to)) for move in moves]
    moved_any = np.logical_or.reduce(chosen) if chosen else np.zeros_like(loads)
    address[(loads | stores) & ~moved_any] += offset
    for move, inside in zip([*loads_from, *stores_to], chosen):
        why = _moved(columns, inside, move, entry)
        if why is not None:
            return why
    for name in ("param_addr", "table_addr"):  # moved in every STORE: where a STORE reads neither, no harm
        columns[name] = np.where(stores, columns[name] + offset, columns[name])
    return encode_columns(columns)


class _Unplaceable(Exception):
    """Why Concats cannot be laid out by addressing."""


def _placements(links: list[Link], regions: list) -> tuple[dict, dict]:
    """Where Concats put their parts: per link index and per Concat, the buffer it lies in (the outermost Concat)
    and its channel offset there (none for an outermost Concat or a link in none); and per buffer its rows.
    :class:`_Unplaceable` says why they cannot be laid out so."""
    concats: dict[Concat, None] = {}  # in the order met

    def gather(source) -> None:
        if isinstance(source, Concat) and source not in concats:
            concats[source] = None
            for part, _ in source.parts:
                gather(part)

    for entry in links:
        gather(entry.source)
    within: dict = {}  # a link index or a Concat -> the (Concat, offset) places it lies at
    widths: dict[int, int] = {}  # a link index -> the channels a Concat takes of it
    for concat in concats:
        offset = 0
        for part, channels in concat.parts:
            within.setdefault(part, []).append((concat, offset))
            if not isinstance(part, Concat):
                widths[part] = channels
            offset += channels
        for other in concats:  # a Concat whose parts begin another's is that one's first channels
            if len(other.parts) > len(concat.parts) and all(
                    a == b and part is other_part for (part, a), (other_part, b) in zip(concat.parts, other.parts)):
                within.setdefault(concat, []).append((other, 0))
    placed: dict = {}

    def place(key) -> tuple[Concat, int] | None:
        if key not in placed:
            places = set()
            for outer, offset in within.get(key, []):
                up = place(outer)
                places.add((outer, offset) if up is None else (up[0], up[1] + offset))
            if len(places) > 1:
                name = key.layer if isinstance(key, Concat) else links[key].layer
                raise _Unplaceable(f"{name}'s channels would lie in two places of concatenations' buffers")
            placed[key] = next(iter(places), None)
        return placed[key]

    buffers: dict[Concat, int] = {}
    for key in within:
        where = place(key)
        if isinstance(key, int):
            region, entry, channels = regions[key][1], links[key], widths[key]
            if region.pitch != region.valid or region.valid != channels or entry.program.requant is None:
                raise _Unplaceable(f"{entry.layer} writes rows ({region.valid} of {region.pitch} bytes) that its "
                                   f"concatenation cannot take as {channels} channels")
            root, count = where[0], region.size // region.pitch
            if buffers.setdefault(root, count) != count:
                raise _Unplaceable(f"{root.layer} joins tensors of different sizes")
    return {key: where for key, where in placed.items() if where is not None}, buffers


def _token_balance(program) -> str | None:
    """Which token kind a program leaves outstanding or takes more of than it gives, if any."""
    columns = _columns(program)
    for kind, ((push_op, push), (pop_op, pop)) in _TOKENS.items():
        pushed = int(columns[push][columns["opcode"] == push_op].sum())
        popped = int(columns[pop][columns["opcode"] == pop_op].sum())
        if pushed != popped:
            return f"{kind}: {pushed} given, {popped} taken"
    return None


def _outgrown(links: list[Link], offsets: list[int], size: int, limit: int) -> str | None:
    """Why an image of ``size`` bytes, the layers' programs at ``offsets``, does not fit ``limit`` bytes, if it
    does not: the first layer it outgrows them at."""
    if size <= limit:
        return None
    layer = next((entry.layer for entry, offset in zip(links, offsets)
                  if offset + entry.program.program.memory.size > limit), "its buffers and instructions")
    where = "the memory port addresses" if limit == ADDRESS_SPACE else "the device holds"
    return f"the network needs {size:,} bytes of memory and {where} {limit:,}: it outgrows them at {layer}"


def link(links: list[Link], memory_bytes: int | None = None) -> NetworkProgram | str:
    """Link the layers' programs (``links`` in execution order) into one :class:`NetworkProgram`, or say why not:
    a layout that differs between a producer and its consumer, Concats that cannot be laid out by addressing, a
    program whose tokens do not balance, or an image beyond the device's ``memory_bytes`` (None: the memory port's
    address space)."""
    inputs = [index for index, entry in enumerate(links) if entry.source is None]
    if inputs != list(range(len(inputs))):
        return f"{links[inputs[-1]].layer} reads the network's input after layers that need the network's results"
    regions = [_regions(entry.program) for entry in links]
    try:
        placed, buffers = _placements(links, regions)
    except _Unplaceable as why:
        return str(why)

    def buffered(source) -> tuple[Concat, int] | None:
        """The buffer and channel offset where a source lies in one."""
        if isinstance(source, Concat):
            return placed.get(source, (source, 0))
        return placed.get(source)

    for index, entry in enumerate(links):
        wanted, _, addend = regions[index]
        if (index in placed and addend is not None) or isinstance(entry.addend, Concat) or entry.addend in placed:
            return f"{entry.layer} adds a residual to or from a concatenation's buffer"
        if (where := buffered(entry.source)) is not None:
            channels, count = (entry.source.channels if isinstance(entry.source, Concat)
                               else regions[entry.source][1].valid), buffers[where[0]]
            if (wanted.pitch, wanted.valid, wanted.size) != (channels, channels, count * channels):
                return (f"{entry.layer} reads its input ({wanted.size} bytes, {wanted.valid} of {wanted.pitch} a row) "
                        f"in another layout than {where[0].layer} lays out ({count} rows of {channels} channels)")
        for what, source, region in (("input", entry.source, wanted), ("addend", entry.addend, addend)):
            if source is None or region is None or buffered(source) is not None:
                continue
            produced = regions[source][1]
            if not region.holds_like(produced):
                return (f"{entry.layer} reads its {what} ({region.size} bytes, rows of {region.pitch}) in another "
                        f"layout than {links[source].layer} writes it ({produced.size} bytes, rows of {produced.pitch})")
        unbalanced = _token_balance(entry.program)
        if unbalanced is not None:
            return f"{entry.layer}'s program leaves its tokens unbalanced ({unbalanced})"
    memory = MemoryImage()
    offsets = [memory.allocate(entry.program.program.memory.size) for entry in links]
    starts = {root: memory.allocate(count * root.channels) for root, count in buffers.items()}
    limit = ADDRESS_SPACE if memory_bytes is None else memory_bytes
    if (outgrown := _outgrown(links, offsets, memory.used, limit)) is not None:
        return outgrown

    def move(region: Region, source) -> _Move:
        """Where the rows of ``region`` go: a buffer's slice, or (``source`` a link) that link's output."""
        where = buffered(source)
        if where is None:
            return _Move(region, offsets[source] + regions[source][1].start)
        root, offset = where
        return _Move(region, starts[root] + offset, None if root.channels == region.pitch else root.channels)

    streams, result_places = [], {}
    sync = encode_columns({"opcode": np.array([Opcode.SYNC])})
    for index, (entry, offset) in enumerate(zip(links, offsets)):
        image = entry.program.program.memory
        memory.data[offset:offset + image.size] = image.data
        wanted, output, addend = regions[index]
        loads_from = [] if entry.source is None else [move(wanted, entry.source)]
        stores_to = [] if index not in placed else [move(output, index)]
        if stores_to:
            result_places[index] = (stores_to[0].start, stores_to[0].pitch or output.pitch)
        relocated = _relocated(entry.program, offset, loads_from, stores_to)
        if isinstance(relocated, str):
            return f"{entry.layer}'s program cannot read or write a concatenation's buffer: {relocated}"
        streams += [relocated, sync]
        if addend is not None and entry.addend is not None:  # the add blocks point at the producer's rows
            target = offsets[entry.addend] + regions[entry.addend][1].start - (offset + output.start)
            for block in entry.program._add_blocks:
                where = offset + block
                add = ResidualAdd.from_block(memory.data[where:where + ADD_BLOCK_BYTES])
                memory.data[where:where + ADD_BLOCK_BYTES] = dataclasses.replace(add, addend_offset=target).block()
    streams[-1] = encode_columns({"opcode": np.array([Opcode.FINISH])})
    words = np.concatenate(streams)
    program = Program.place_words(memory, words, macs=sum(entry.program.program.macs for entry in links))
    if (outgrown := _outgrown(links, offsets, memory.used, limit)) is not None:
        return outgrown
    memory.trim()  # what the device is sent: no spare capacity
    for entry, offset in zip(links, offsets):  # each program's memory is now its place in the network's
        image = entry.program.program.memory
        image.data = memory.data[offset:offset + image.size]
    return NetworkProgram(program, links, len(links), result_places)
