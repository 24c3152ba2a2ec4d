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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mvu.hdl.contract.isa import INSTRUCTION_BYTES, Opcode, decode_columns, encode_columns
from mvu.hdl.contract.program import MemoryImage, Program
from mvu.hdl.contract.residual_add import ADD_BLOCK_BYTES, ResidualAdd
from mvu.host.gemm import ADDRESS_SPACE

__all__ = ["Link", "NetworkProgram", "Region", "link"]

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


@dataclass
class Link:
    """One layer's program in the network and where its operands come from: ``source`` and ``addend`` are the
    indices of the links whose outputs they read (``None``: the network's input, written by the host)."""

    layer: str
    program: object
    source: int | None
    addend: int | None = None


@dataclass
class NetworkProgram:
    """The linked network: :attr:`program` runs every layer; ``links`` in order, their programs' memories now
    views of :attr:`program`'s image. Only :attr:`inputs` (links reading the network's input) need the host's
    ``load_activations`` before a run."""

    program: Program
    links: list[Link]
    layers: int  # SYNC-separated layer programs

    @property
    def inputs(self) -> list[Link]:
        return [link for link in self.links if link.source is None]


def _columns(program) -> dict[str, np.ndarray]:
    """A layer program's instructions, decoded."""
    words = program.program.memory.data[program.program.address:][:program.program.length * INSTRUCTION_BYTES]
    return decode_columns(words.reshape(-1, INSTRUCTION_BYTES))


def _relocated(program, offset: int, redirects: list[tuple[Region, int]]) -> np.ndarray:
    """``program``'s instructions but its FINISH, their addresses moved by ``offset``; LOADs inside a redirected
    region read the same bytes of another place (``(region, new start)``, before the move)."""
    columns = _columns(program)
    keep = columns["opcode"] != Opcode.FINISH
    columns = {name: values[keep].copy() for name, values in columns.items()}
    opcode = columns["opcode"]
    loads, stores = opcode == Opcode.LOAD, opcode == Opcode.STORE
    address = columns["dram_addr"]
    moved = address + offset
    for region, start in redirects:
        inside = loads & (address >= region.start) & (address < region.start + region.size)
        moved[inside] = start + (address[inside] - region.start)
    columns["dram_addr"] = np.where(loads | stores, moved, address)
    for name in ("param_addr", "table_addr"):  # moved in every STORE: where a STORE reads neither, no harm
        columns[name] = np.where(stores, columns[name] + offset, columns[name])
    return encode_columns(columns)


def _token_balance(program) -> str | None:
    """Which token kind a program leaves outstanding or takes more of than it gives, if any."""
    columns = _columns(program)
    for kind, ((push_op, push), (pop_op, pop)) in _TOKENS.items():
        pushed = int(columns[push][columns["opcode"] == push_op].sum())
        popped = int(columns[pop][columns["opcode"] == pop_op].sum())
        if pushed != popped:
            return f"{kind}: {pushed} given, {popped} taken"
    return None


def link(links: list[Link]) -> NetworkProgram | str:
    """Link the layers' programs (``links`` in execution order) into one :class:`NetworkProgram`, or say why not:
    a layout that differs between a producer and its consumer, a program whose tokens do not balance, or an image
    beyond the memory port's address space."""
    inputs = [index for index, entry in enumerate(links) if entry.source is None]
    if inputs != list(range(len(inputs))):
        return f"{links[inputs[-1]].layer} reads the network's input after layers that need the network's results"
    regions = [_regions(entry.program) for entry in links]
    for index, entry in enumerate(links):
        wanted, _, addend = regions[index]
        for what, source, region in (("input", entry.source, wanted), ("addend", entry.addend, addend)):
            if source is None or region is None:
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
    if memory.size >= ADDRESS_SPACE:
        return f"the network needs {memory.size:,} bytes of memory; the memory port addresses {ADDRESS_SPACE:,}"
    streams = []
    sync = encode_columns({"opcode": np.array([Opcode.SYNC])})
    for index, (entry, offset) in enumerate(zip(links, offsets)):
        image = entry.program.program.memory
        memory.data[offset:offset + image.size] = image.data
        wanted, output, addend = regions[index]
        redirects = []
        if entry.source is not None:
            redirects.append((wanted, offsets[entry.source] + regions[entry.source][1].start))
        streams.append(_relocated(entry.program, offset, redirects))
        streams.append(sync)
        if addend is not None and entry.addend is not None:  # the add blocks point at the producer's rows
            target = offsets[entry.addend] + regions[entry.addend][1].start - (offset + output.start)
            for block in entry.program._add_blocks:
                where = offset + block
                add = ResidualAdd.from_block(memory.data[where:where + ADD_BLOCK_BYTES])
                memory.data[where:where + ADD_BLOCK_BYTES] = dataclasses.replace(add, addend_offset=target).block()
    streams[-1] = encode_columns({"opcode": np.array([Opcode.FINISH])})
    words = np.concatenate(streams)
    program = Program.place_words(memory, words, macs=sum(entry.program.program.macs for entry in links))
    for entry, offset in zip(links, offsets):  # each program's memory is now its place in the network's
        image = entry.program.program.memory
        image.data = memory.data[offset:offset + image.size]
    return NetworkProgram(program, links, len(links))
