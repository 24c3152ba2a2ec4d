"""Runs a quantized model: accelerator layers as GEMM programs on an executor, the rest on the host.

Tensors carry a leading batch axis throughout (``[N, C, H, W]``, ``[N, features]``): an accelerator
layer runs as ONE matrix product whose rows are all the images' rows, so its weights are loaded once
per batch rather than once per image.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.program import Program, RunResult
from mvu.hdl.contract.requantization import Requantization, float32_significand, quantize_multiplier, requantize
from mvu.host.depthwise import DepthwiseProgram, depthwise_limit
from mvu.host.executors import BACKENDS, FIXED_WEIGHTS, make_executor
from mvu.host.executors.kernels import depthwise_sums, qlinear_add
from mvu.host.executors.onnxruntime_add import QLinearAdd, add_coefficients, onnxruntime_add
from mvu.host.executors.requantize import requantize_rows
from mvu.host.gemm import ConvolutionInput, GemmProgram, golden_gemm
from mvu.host.global_pool import GlobalPoolProgram, global_pool_limit
from mvu.host.model.quantized import VIEW, Layer, QuantizedModel
from mvu.host.network_program import Concat, Link, NetworkProgram, link
from mvu.host.packed_rows import RowPackedProgram, packed_rows_limit
from mvu.host.runtime.fused_adds import FUSED_ADD, FUSED_TABLE, FusedAdd, fused_adds
from mvu.host.runtime.scores import softmax

__all__ = ["DeviceMemoryError", "LayerStats", "ModelRunner", "im2col", "sub_batch_sizes", "uniform_pool"]


class _Unrun:
    """An executor that leaves programs unrun: the pass that builds and links a slow backend's network program
    needs each layer's program and what it reads, not what it computes."""

    name = "unrun"

    def __init__(self, memory_bytes_per_cycle: float | None):
        self.memory_bytes_per_cycle = memory_bytes_per_cycle

    def run(self, program: Program) -> RunResult:
        return RunResult(backend=self.name, wall_seconds=0.0, instructions=0, counters={})


@dataclass
class LayerStats:
    """One layer's cost in a run, for the whole batch of ``images``."""

    name: str
    kind: str
    placement: str
    macs: int  # for the whole batch
    images: int = 1  # the batch size
    cycles: int = 0
    seconds: float = 0.0
    im2col_seconds: float = 0.0  # the host's share of lowering a convolution to a GEMM
    counters: dict = field(default_factory=dict)
    #: A convolution's: "rows" (its pixels are the product's rows), "windows" or "packed rows" (window LOADs read its
    #: input tensor), "im2col" (patches made on the host).
    lowering: str = ""

    @classmethod
    def total(cls, parts: Sequence["LayerStats"]) -> "LayerStats":
        """One layer's stats summed over several runs (the sub-batches of one batch)."""
        counters: dict = {}
        for part in parts:
            for key, value in part.counters.items():
                counters[key] = counters.get(key, 0) + value
        first = parts[0]
        return cls(first.name, first.kind, first.placement, sum(p.macs for p in parts), sum(p.images for p in parts),
                   sum(p.cycles for p in parts), sum(p.seconds for p in parts),
                   sum(p.im2col_seconds for p in parts), counters, first.lowering)


class DeviceMemoryError(ValueError):
    """A layer's program does not fit the memory of the device that would run it."""


def sub_batch_sizes(images: int) -> list[int]:
    """A batch as sub-batches of powers of two, largest first (7 -> 4, 2, 1)."""
    return [1 << bit for bit in reversed(range(images.bit_length())) if images >> bit & 1]


def _output_size(padded: int, kernel: int, stride: int, dilation: int) -> int:
    return (padded - dilation * (kernel - 1) - 1) // stride + 1


def im2col(x: np.ndarray, kernel, strides, pads, dilations, pad_value: int) -> tuple[np.ndarray, int, int]:
    """``x`` [C, H, W] -> patches [Ho * Wo, kh * kw * C]; a batch [N, C, H, W] -> [N * Ho * Wo, kh * kw * C],
    image after image.

    A patch lists its taps row by row with each tap's channels together, like
    ``weight.transpose(0, 2, 3, 1)``: from a channels-last input (the layout
    convolutions leave behind) each copied run is ``kw * C`` bytes long, and
    a 1x1 convolution with stride 1 needs no copy at all.
    """
    batch = x if x.ndim == 4 else x[None]
    n, c, h, w = batch.shape
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations
    top, left, bottom, right = pads[0], pads[1], pads[2], pads[3]
    padded = batch.transpose(0, 2, 3, 1)
    if any(pads):
        padded = np.full((n, h + top + bottom, w + left + right, c), pad_value, dtype=x.dtype)
        padded[:, top:top + h, left:left + w] = batch.transpose(0, 2, 3, 1)
    ho, wo = _output_size(h + top + bottom, kh, sh, dh), _output_size(w + left + right, kw, sw, dw)
    s = padded.strides
    windows = np.lib.stride_tricks.as_strided(
        padded, (n, ho, wo, kh, kw, c), (s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]), writeable=False)
    return windows.reshape(n * ho * wo, kh * kw * c), ho, wo


def _plain(config: HardwareConfig, conv: ConvolutionInput) -> bool:
    """A 1x1, stride-1, unpadded convolution: its input's pixels are the product's rows already (im2col copies
    nothing)."""
    return conv.kernel == (1, 1) and conv.strides == (1, 1) and not any(conv.pads)


def _expressible(config: HardwareConfig, conv: ConvolutionInput) -> bool:
    """Whether window LOADs of one tap per K tile can read it at all (with more K tiles than host patches: what a
    network program takes rather than a pass on the host)."""
    return conv.limit() is None


def _windowed(config: HardwareConfig, conv: ConvolutionInput) -> bool:
    """Whether window LOADs of one tap per K tile read a convolution's input: where they cost no more K tiles, and
    so no more MACs and cycles, than host patches (each tap's channels padded to ``rows`` vs. a patch row padded
    once: equal whenever the channels fill whole tiles) and the descriptor can express it."""
    kh, kw = conv.kernel
    rows, channels = config.rows, conv.x.shape[3]
    return kh * kw * -(-channels // rows) == -(-kh * kw * channels // rows) and _expressible(config, conv)


def _packed_rows(config: HardwareConfig, conv: ConvolutionInput) -> bool:
    """Whether window LOADs of one kernel row per K tile read it (few channels: the 3-channel stem, whose 7x7 taps
    would take 49 tiles one tap per tile, 7 a row per tile, 5 as host patches)."""
    return packed_rows_limit(config, conv) is None


#: How an accelerator convolution reaches the array, the first that can take it: its ``stats.lowering``, the test,
#: the program reading its input tensor (``None``: host patches), and whether only for a network program.
_LOWERINGS = (("rows", _plain, None, False), ("windows", _windowed, GemmProgram, False),
              ("packed rows", _packed_rows, RowPackedProgram, False), ("windows", _expressible, GemmProgram, True),
              ("im2col", lambda config, conv: True, None, False))


def _conv_out_size(size: tuple[int, int], attrs: dict) -> tuple[int, int]:
    """A convolution's output height and width for an input of ``size``."""
    top, left, bottom, right = attrs["pads"]
    return tuple(_output_size(extent + before + after, kernel, stride, dilation) for extent, before, after, kernel,
                 stride, dilation in zip(size, (top, left), (bottom, right), attrs["kernel"], attrs["strides"],
                                         attrs["dilations"]))


def _pool_pads(size: tuple[int, ...], attrs: dict) -> list[int]:
    """A pooling layer's pads, the bottom and right ones grown by what ``ceil_mode`` adds: onnxruntime's output
    size, ``ceil((padded - kernel) / stride) + 1`` less a last window that would start in the end padding."""
    pads = list(attrs["pads"])
    if attrs.get("ceil_mode"):
        for axis, (length, kernel, stride) in enumerate(zip(size, attrs["kernel"], attrs["strides"])):
            begin, end = pads[axis], pads[axis + 2]
            out = -(-(length + begin + end - kernel) // stride) + 1
            if (out - 1) * stride >= length + begin:
                out -= 1
            pads[axis + 2] = max(end, (out - 1) * stride + kernel - length - begin)
    return pads


def uniform_pool(size: tuple[int, ...], attrs: dict) -> bool:
    """Whether every window of an average pool over ``size`` divides by the whole kernel: no pads (after
    ``ceil_mode``), or pads counted (``count_include_pad``, and ``ceil_mode``'s only with ``count_ceil_pad``)."""
    pads = _pool_pads(size, attrs)
    return not any(pads) or bool(attrs["count_include_pad"] and (pads == attrs["pads"] or attrs.get("count_ceil_pad")))


def _channels_first(out: np.ndarray, n: int, ho: int, wo: int) -> np.ndarray:
    """Rows of [N * Ho * Wo, C] as an [N, C, Ho, Wo] tensor: a view, still channels-last in memory."""
    return out.reshape(n, ho, wo, -1).transpose(0, 3, 1, 2)


def _rescale(x: np.ndarray, ratio: float, zero_point: int) -> np.ndarray:
    """``x * ratio + zero_point`` as uint8 codes, in the post-processor's fixed point (rounding half up)."""
    multiplier, shift = quantize_multiplier(ratio)
    return requantize(x, 0, multiplier, shift, zero_point, 0, 255)


def _requantization(layer: Layer, channels: slice) -> Requantization:
    """The post-processor's parameters for ``channels`` of a layer: fixed point, or the float32 scales of a
    model imported with its own scales (onnxruntime's arithmetic). A layer with a fused table requantizes into the
    table's input codes (``table_zero_point``)."""
    low, high = layer.attrs["clamp"]
    zero_point = layer.attrs.get("table_zero_point", layer.out_q.zero_point)
    limits = dict(out_zero_point=zero_point, clamp_min=low, clamp_max=high)
    if layer.attrs.get("rounding") == "float32":
        return Requantization.from_float32_scales(layer.arrays["scale"][channels], layer.arrays["bias"][channels],
                                                  **limits)
    return Requantization(layer.arrays["bias"][channels], layer.arrays["multiplier"][channels],
                          layer.arrays["shift"][channels], **limits)


class ModelRunner:
    """Executes :class:`QuantizedModel` layers in order on uint8 tensors.

    ``backend`` is one of :data:`~mvu.host.executors.BACKENDS`: a GEMM program per accelerator layer and
    batch size, run on its executor (``executor`` replaces the one it would make), or, for a backend without
    one, the same products computed directly from their definition.

    With ``network``, the first batch of a size runs layer by layer and links the layers' programs into one
    :class:`~mvu.host.network_program.NetworkProgram` where they link (:attr:`networks` says why not otherwise);
    later batches of that size run it: the host writes the input, one program runs every layer, the layers'
    results are read where the program left them (their :attr:`tensors` are views of its memory until it runs
    again; the output is a copy). That run's cycles and counters are in the stats of the layer that starts it (the
    last to read the network's input).
    """

    def __init__(self, model: QuantizedModel, config: HardwareConfig, backend: str = "numpy", executor=None, *,
                 program_cache_bytes: int = 2 << 30, network: bool = False):
        self.model, self.config, self.backend, self.network = model, config, backend, network
        #: Per batch size: the linked network, or why its programs do not link.
        self.networks: dict[int, NetworkProgram | str] = {}
        self._links: list[Link] | None = None  # being recorded by a layer-by-layer batch
        self._producers: dict[str, int | str] = {}  # per tensor: the link writing it, or the host layer that does
        self._aliases: dict[str, str] = {}  # per tensor a fused Add or table hands on: the tensor whose bytes it is
        self._replay: tuple[NetworkProgram, list[int]] | None = None  # the network a batch runs, its links to go
        if executor is None:
            executor = make_executor(backend, config)
        self.executor = executor
        #: The memory of the executor's device (a board's), which every program must fit (None: no limit).
        self.memory_bytes: int | None = getattr(executor, "memory_bytes", None)
        self.stats: list[LayerStats] = []
        self.last_output: np.ndarray | None = None
        self.tensors: dict[str, np.ndarray] = {}  # every tensor of the last batch, batch axis first
        self.kept: dict[str, np.ndarray] = {}  # tensors that run_sub_batches was asked to keep
        # Per product of the model and number of rows (the batch size), least recently used first: a batch
        # size seen before reuses its programs, within ``program_cache_bytes`` of memory images.
        self._programs: OrderedDict[tuple, GemmProgram] = OrderedDict()
        self._program_cache_bytes = program_cache_bytes
        self._used: list[GemmProgram] = []  # by the last batch
        self._operands: dict[tuple, tuple] = {}  # per convolution group: weight matrix, requantization
        self._lowerings: dict[tuple, tuple[str, type | None]] = {}  # per convolution group and input shape
        self._requantizations: dict[str, Requantization] = {}  # per layer, for the layers without groups
        self._adds: dict[str, QLinearAdd | None] = {}  # per Add layer with two inputs
        # Per convolution whose STOREs do an Add layer, found at its first run (the products' backends only: the
        # numpy backend keeps every tensor, which the compiler's per-layer SQNR reads).
        self._fused_adds: dict[str, FusedAdd] | None = None
        self._added: dict[str, str] = {}  # per Add layer done by the last batch's STOREs: the convolution's output
        self._looked_up: dict[str, str] = {}  # per table looked up by those STOREs after their add: the Add's output

    def gemm(self, a: np.ndarray | ConvolutionInput, w: np.ndarray, zero_point: int, requant: Requantization | None,
             stats: LayerStats, key: tuple, table: np.ndarray | None = None, kind: type = GemmProgram,
             **options) -> np.ndarray:
        """``key`` names the product within the model: its program (a ``kind``, made from the same arguments) is
        built once per number of rows (the batch size) and rerun on new activations. Raw int32 sums (``requant``
        None) come back as a view of the program's memory, valid until the product runs again. A ``table`` (256
        bytes) is looked up by the product's STOREs, after a ``residual`` add of an ``addend`` if given; the other
        ``options`` are the program's (see :class:`GemmProgram`)."""
        if self.executor is None:
            return golden_gemm(a, w, zero_point, requant, table, **options)
        if self._replay is not None:
            return self._replayed(a, stats)
        key = (*key, a.shape[0])
        program = self._programs.get(key)
        if program is None:
            program = self._programs[key] = kind(
                self.config, a, w, act_zero_point=zero_point, requant=requant,
                memory_bytes_per_cycle=self.executor.memory_bytes_per_cycle, table=table, **options)
            program.program.notes[FIXED_WEIGHTS] = True  # between runs only load_activations/load_addend write
            self._used.append(program)
            self._evict()
        else:
            self._programs.move_to_end(key)
            program.load_activations(a)
            if "addend" in options:
                program.load_addend(options["addend"])
            self._used.append(program)
        if self.memory_bytes is not None and program.program.memory.size > self.memory_bytes:
            raise DeviceMemoryError(f"layer {key[0]}'s program needs {program.program.memory.size:,} bytes of "
                                    f"memory; the device holds {self.memory_bytes:,}")
        self._count(stats, self.executor.run(program.program))
        return program.result(copy=requant is not None)  # raw sums are consumed at once; outputs are kept

    @staticmethod
    def _count(stats: LayerStats, run) -> None:
        """Add a run's cycles and counters to a layer's stats."""
        stats.cycles += run.counters.get("cycles", 0)
        for key, value in run.counters.items():
            stats.counters[key] = stats.counters.get(key, 0) + value

    def _replayed(self, a, stats: LayerStats) -> np.ndarray:
        """The next layer's result in a network run: the host writes the network's input into the layers that read
        it, the last of them runs the network, and every layer's result is read where the network left it (a view
        of the network's memory, valid until the network runs again)."""
        network, pending = self._replay
        index = pending.pop(0)
        entry = network.links[index]
        if entry.source is None:
            entry.program.load_activations(a)
            if entry is network.inputs[-1]:
                self._count(stats, self.executor.run(network.program))
        return network.result(index) if index in network.placed else entry.program.result(copy=False)

    def _link_unrun(self, images_q: np.ndarray) -> np.ndarray:
        """A slow backend's first batch of a size in network mode: the layers' programs are built and linked
        without running (:class:`_Unrun`: the same programs, tiled for the same memory), then the batch runs on the
        slow backend, as the network where the programs linked, else layer by layer. Nothing the network computes
        is in its memory before it runs: every tensor but the input is the device's own."""
        (backend, executor), (self.backend, self.executor) = (self.backend, self.executor), (
            "reference", _Unrun(self.executor.memory_bytes_per_cycle))
        try:
            self.run_batch(images_q)
        finally:
            self.backend, self.executor = backend, executor
        return self.run_batch(images_q)  # the network, or layer by layer where it did not link

    def _record(self, layer: Layer, stats: LayerStats, made: list) -> None:
        """Note, while a batch runs layer by layer, which program wrote each tensor and what each program read."""
        producer = self._producers
        if stats.lowering == "im2col":
            self._unlinked = f"{layer.name} reads im2col patches the host makes"
            return
        if len(made) == 1:
            program = made[0]
            fused = (self._fused_adds or {}).get(layer.name)
            addend = fused.addend if fused is not None and getattr(program, "residual", None) is not None else None
            sources = [self._source(name) for name in (layer.inputs[0], addend)]
            hosted = next((source for source in sources if isinstance(source, str)), None)
            if hosted is not None:
                self._unlinked = f"{layer.name} reads what {hosted} computes on the host"
                return
            self._links.append(Link(layer.name, program, *sources))
            producer[layer.output] = len(self._links) - 1
        elif layer.kind == "concat" and stats.placement == VIEW:
            parts = [(self._source(name), self.model.shapes[name][1]) for name in layer.inputs]
            outside = next((source for source, _ in parts if source is None or isinstance(source, str)), False)
            if outside is not False:
                self._unlinked = f"{layer.name} concatenates " + (
                    "the network's input" if outside is None else f"what {outside} computes on the host")
                return
            producer[layer.output] = Concat(layer.name, tuple(parts))
        elif not made and stats.placement in (VIEW, FUSED_ADD, FUSED_TABLE):
            producer[layer.output] = producer.get(self._aliases.get(layer.output, layer.inputs[0]))
        else:
            producer[layer.output] = layer.name

    def _source(self, name: str | None) -> int | str | None:
        """The link writing tensor ``name`` (``None``: the network's input, or no tensor), or the host layer that
        writes it."""
        if name is None or name == self.model.input:
            return None
        return self._producers.get(name, name)

    def _evict(self) -> None:
        """Drop the least recently used programs while their memory images exceed the cache's size."""
        total = sum(program.program.memory.size for program in self._programs.values())
        for key in list(self._programs):
            if total <= self._program_cache_bytes:
                break
            program = self._programs[key]
            if program not in self._used:  # the running batch keeps its programs
                total -= program.program.memory.size
                del self._programs[key]

    def product_shapes(self) -> list[tuple[int, int, int]]:
        """``(M, K, N)`` of each accelerator product of the last batch (one per layer and group)."""
        return [(program.m, program.k, program.n) for program in self._used]

    def run(self, image_q: np.ndarray) -> np.ndarray:
        """``image_q``: uint8 [1, C, H, W] in the model's input quantization; returns float logits [1, classes]."""
        return self.run_batch(image_q)

    def _checked(self, images_q: np.ndarray) -> np.ndarray:
        images_q = np.asarray(images_q)
        expected = tuple(self.model.input_shape[1:])
        if images_q.ndim != 4 or images_q.shape[1:] != expected or not len(images_q) or images_q.dtype != np.uint8:
            raise ValueError(f"expected uint8 images [N >= 1, {', '.join(map(str, expected))}], "
                             f"got {images_q.dtype} {list(images_q.shape)}")
        return images_q

    def run_sub_batches(self, images_q: np.ndarray, keep: Sequence[str] = ()) -> np.ndarray:
        """:meth:`run_batch` over power-of-two sub-batches (:func:`sub_batch_sizes`): the programs kept are those
        of a few sizes, not of every batch size a caller happens to form. :attr:`stats` sums the sub-batches;
        :attr:`tensors` are the last one's, and :attr:`kept` the tensors named in ``keep`` of all of them."""
        images_q, logits, runs, kept, start = self._checked(images_q), [], [], [], 0
        for size in sub_batch_sizes(len(images_q)):
            logits.append(self.run_batch(images_q[start:start + size]))
            runs.append(self.stats)
            kept.append([np.array(self.tensors[name]) for name in keep])
            start += size
        self.stats = runs[0] if len(runs) == 1 else [LayerStats.total(parts) for parts in zip(*runs)]
        self.kept = {name: np.concatenate(parts) for name, parts in zip(keep, zip(*kept))}
        self.last_output = np.concatenate(logits)
        return self.last_output

    def prepare(self, max_batch_size: int) -> None:
        """Build the programs of every sub-batch size up to ``max_batch_size`` now, so that no batch pays for a
        build; not on a slow backend, where building means simulating."""
        if BACKENDS[self.backend].slow:
            return
        for bit in range(max_batch_size.bit_length()):
            self.run_batch(np.zeros((1 << bit, *self.model.input_shape[1:]), np.uint8))

    def run_batch(self, images_q: np.ndarray) -> np.ndarray:
        """``images_q``: uint8 [N, C, H, W] in the model's input quantization; returns float logits [N, classes].

        Each accelerator layer is one GEMM over the whole batch. Afterwards :attr:`stats` has one
        :class:`LayerStats` per layer for the whole batch (cycles, MACs and seconds summed over the images)
        and :attr:`tensors` every tensor of this batch.
        """
        images_q = self._checked(images_q)
        n = len(images_q)
        if self.network and self.executor is not None and n not in self.networks and BACKENDS[self.backend].slow:
            return self._link_unrun(images_q)
        tensors = {self.model.input: images_q}
        self.stats, self._used = [], []
        network = self.networks.get(n) if self.network and self.executor is not None else None
        linking = self.network and self.executor is not None and n not in self.networks
        self._replay = (network, list(range(len(network.links)))) if isinstance(network, NetworkProgram) else None
        self._links, self._producers, self._aliases = ([] if linking else None), {}, {}
        self._unlinked: str | None = None  # why this batch's programs do not link
        # RTL runs take seconds: show which layer is running when a person is watching.
        show = BACKENDS[self.backend].slow and sys.stderr.isatty()
        for index, layer in enumerate(self.model.layers):
            if show:
                print(f"\r  RTL: layer {index + 1}/{len(self.model.layers)} {layer.name:<32}", end="", file=sys.stderr)
            stats = LayerStats(layer.name, layer.kind, layer.placement, layer.macs * n, images=n)
            started, before = time.perf_counter(), len(self._used)
            tensors[layer.output] = getattr(self, f"_{layer.kind}")(layer, tensors, stats)
            stats.seconds = time.perf_counter() - started
            self.stats.append(stats)
            if self._links is not None and self._unlinked is None:
                self._record(layer, stats, self._used[before:])
        if show:
            print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
        if linking:
            self.networks[n] = self._unlinked or (link(self._links, self.memory_bytes) if self._links else
                                                  "no layer ran on the accelerator")
            if isinstance(self.networks[n], NetworkProgram):  # later batches write only its inputs
                self.networks[n].program.notes[FIXED_WEIGHTS] = True
        output = tensors[self.model.output]
        self.last_output = np.array(output) if self._replay is not None else output  # not a view of the network
        self._replay, self._links = None, None
        self.tensors = tensors
        return self.last_output

    # Layers ---------------------------------------------------------------

    def _q(self, name):
        return self.model.tensor_q[name]

    def _conv(self, layer: Layer, tensors, stats):
        x = tensors[layer.inputs[0]]
        a = layer.attrs
        weight = layer.arrays["weight"]
        group = a["group"]
        c_out = weight.shape[0]
        outputs = []
        per_group_in, per_group_out = x.shape[1] // group, c_out // group
        if group > 1 and per_group_in == per_group_out == 1:
            return self._depthwise(layer, x, stats)
        residual = self._residual(layer, tensors, (len(x), c_out, *_conv_out_size(x.shape[2:], a))) if group == 1 else {}
        table = residual.pop("table", layer.arrays.get("table"))
        for g in range(group):
            part = x[:, g * per_group_in:(g + 1) * per_group_in]
            channels = slice(g * per_group_out, (g + 1) * per_group_out)
            w, requant = self._group_operands(layer, g, channels)
            windows = ConvolutionInput(part.transpose(0, 2, 3, 1), tuple(a["kernel"]), tuple(a["strides"]),
                                       tuple(a["pads"]), tuple(a["dilations"]))
            stats.lowering, kind = self._lowering(layer, g, windows)
            if kind is not None:
                ho, wo = windows.out_size
                out = self.gemm(windows, w, a["in_zero_point"], requant, stats, (layer.name, g), table, kind,
                                **residual)
                outputs.append(out.view(np.uint8))
                continue
            lowering = time.perf_counter()
            patches, ho, wo = im2col(part, a["kernel"], a["strides"], a["pads"], a["dilations"], a["in_zero_point"])
            stats.im2col_seconds += time.perf_counter() - lowering
            if layer.placement == "accelerator":
                out = self.gemm(patches, w, a["in_zero_point"], requant, stats, (layer.name, g), table, **residual)
            else:
                out = golden_gemm(patches, w, a["in_zero_point"], requant, table)
            outputs.append(out.view(np.uint8))
        return _channels_first(outputs[0] if group == 1 else np.concatenate(outputs, axis=1), len(x), ho, wo)

    def _lowering(self, layer: Layer, group: int, windows: ConvolutionInput) -> tuple[str, type | None]:
        """How a convolution group reaches the array (its ``stats.lowering`` and program kind: :data:`_LOWERINGS`),
        decided once per input shape."""
        key = (layer.name, group, windows.x.shape)
        if key not in self._lowerings:
            accelerated = layer.placement == "accelerator" and self.executor is not None
            self._lowerings[key] = next((name, kind) for name, fits, kind, linked in _LOWERINGS
                                        if (self.network or not linked) and fits(self.config, windows)) \
                if accelerated else ("im2col", None)
        return self._lowerings[key]

    def _group_operands(self, layer: Layer, group: int, channels: slice) -> tuple[np.ndarray, Requantization]:
        """A convolution group's weight matrix (rows ordered like im2col's patches) and its post-processor
        parameters, made once per model."""
        key = (layer.name, group)
        if key not in self._operands:
            weight = layer.arrays["weight"][channels]
            w = np.ascontiguousarray(weight.transpose(0, 2, 3, 1).reshape(len(weight), -1).T)
            self._operands[key] = (w, _requantization(layer, channels))
        return self._operands[key]

    def _layer_requantization(self, layer: Layer) -> Requantization:
        if layer.name not in self._requantizations:
            self._requantizations[layer.name] = _requantization(layer, slice(None))
        return self._requantizations[layer.name]

    def _depthwise(self, layer: Layer, x: np.ndarray, stats: LayerStats) -> np.ndarray:
        """One filter per channel: on the accelerator, as a :class:`DepthwiseProgram` (window LOADs, diagonal weight
        tiles), when the layer is placed there and window LOADs can express it (else its ``stats`` say ``host``); on
        the host, or without an executor, the same integer sums (exact in int32) and requantization. Channels last in
        memory either way."""
        a = layer.attrs
        n, c, h, w = x.shape
        windows = ConvolutionInput(x.transpose(0, 2, 3, 1), tuple(a["kernel"]), tuple(a["strides"]), tuple(a["pads"]),
                                   tuple(a["dilations"]))
        ho, wo = windows.out_size
        weight, table = layer.arrays["weight"].reshape(c, *a["kernel"]), layer.arrays.get("table")
        rq = self._layer_requantization(layer)
        if layer.placement == "accelerator" and depthwise_limit(self.config, windows) is not None:
            stats.placement = "host"
        if stats.placement == "accelerator" and self.executor is not None:
            stats.lowering = "windows"
            out = self.gemm(windows, weight, a["in_zero_point"], rq, stats, (layer.name,), table, DepthwiseProgram)
            return _channels_first(out.view(np.uint8), n, ho, wo)
        outputs = []
        for image in windows.x:
            acc = depthwise_sums(image, weight.transpose(1, 2, 0), a["in_zero_point"], windows.strides,
                                 windows.dilations, windows.pads[:2], (ho, wo))
            outputs.append(requantize_rows(acc, rq.bias, rq.multiplier, rq.shift, rq.out_zero_point, rq.clamp_min,
                                           rq.clamp_max, float32_scale=rq.float32_scale))
        out = np.stack(outputs)
        return (out if table is None else table[out]).transpose(0, 3, 1, 2)

    def _residual(self, layer: Layer, tensors, shape: tuple[int, ...]) -> dict:
        """The ``addend`` and ``residual`` add (as :meth:`gemm` takes them) of a convolution whose STOREs do an Add
        layer, noted in :attr:`_added`, and the ``table`` they then look up if a table layer joins the Add (noted in
        :attr:`_looked_up`); none where its other input is not a uint8 tensor of the output's ``shape``."""
        if self._fused_adds is None:
            built = self.executor is not None and self.config.residual_add
            self._fused_adds = fused_adds(self.model) if built else {}
        fused = self._fused_adds.get(layer.name)
        addend = None if fused is None else tensors[fused.addend]
        if addend is None or addend.dtype != np.uint8 or addend.shape != shape:
            return {}
        self._added[fused.add.name] = layer.output
        self._aliases[fused.add.output] = layer.output
        residual = {"addend": np.ascontiguousarray(addend.transpose(0, 2, 3, 1)).reshape(-1, shape[1]),
                    "residual": fused.residual}
        if fused.table is not None:  # the STOREs' output is the table's: the Add hands it on (_add, _lut)
            self._looked_up[fused.table.name] = fused.add.output
            self._aliases[fused.table.output] = fused.add.output
            residual["table"] = fused.table.arrays["table"]
        return residual

    def _add(self, layer: Layer, tensors, stats):
        """Sum of requantized inputs, with onnxruntime's QLinearAdd arithmetic (float32 fused multiply-adds,
        rounding half to even), so that pre-quantized models follow their reference closely. An Add done by the
        STOREs of the convolution before it (:mod:`~mvu.host.runtime.fused_adds`) takes that product's output."""
        if layer.name in self._added:
            stats.placement = FUSED_ADD
            return tensors.pop(self._added.pop(layer.name))
        values = [tensors[name] if name in tensors else layer.arrays[name] for name in layer.inputs]
        low, high = layer.attrs["clamp"]
        add = self._onnxruntime_add(layer) if len(values) == 2 else None
        fused = add(*values, low, high) if add is not None else None
        if fused is not None:
            return fused
        quantizations = [(q.scale, q.zero_point) for q in map(self._q, layer.inputs)]
        ratios, start = add_coefficients(quantizations, (layer.out_q.scale, layer.out_q.zero_point))
        if len(values) == 2:
            fused = qlinear_add(*values, *ratios, start, low, high)
            if fused is not None:
                return fused
        shape = np.broadcast_shapes(*(v.shape for v in values))
        like = next((v for v in values if v.shape == shape), None)  # work in its memory layout
        total = np.full(shape, start, np.float32) if like is None else np.full_like(like, start, dtype=np.float32)
        wide = np.empty_like(total, dtype=np.float64)
        for ratio, value in reversed(list(zip(ratios, values))):  # fma(b, ratio_b, start), then fma(a, ratio_a, .)
            np.multiply(value, np.float64(ratio), out=wide)  # exact in float64, then rounded once to float32
            wide += total
            total[...] = wide
        np.rint(total, out=total)
        return np.clip(total, low, high, out=total).astype(np.uint8)

    def _onnxruntime_add(self, layer: Layer) -> QLinearAdd | None:
        """onnxruntime's kernel for a two-input Add layer (made once per layer), where it is exact here."""
        if layer.name not in self._adds:
            a, b = (self._q(name) for name in layer.inputs)
            self._adds[layer.name] = onnxruntime_add(*((q.scale, q.zero_point) for q in (a, b, layer.out_q)))
        return self._adds[layer.name]

    def _affine(self, layer: Layer, tensors, stats):
        """``x * ratio + offset`` per channel (unfolded BatchNorm, constant Mul/Add) in the post-processor's fixed
        point, ``r = |x * ratio|`` rounded half up. A channel with a negative ratio is requantized by ``|ratio|``
        into the mirrored clamp range: ``clip(offset - r, low, high) == high - clip(r + high - offset, 0,
        high - low)``."""
        x = tensors[layer.inputs[0]]
        in_q, out_q = self._q(layer.inputs[0]), layer.out_q
        low, high = layer.attrs["clamp"]
        per_channel = (-1,) + (1,) * (x.ndim - 2)
        ratio = np.array(layer.attrs["ratio"], np.float64).reshape(per_channel)
        offset = np.array(layer.attrs["offset"], np.int64).reshape(per_channel) + out_q.zero_point
        pairs = np.array([quantize_multiplier(abs(r)) if r else (0, 0) for r in layer.attrs["ratio"]], np.int64)
        multiplier, shift = pairs.T.reshape(2, *per_channel)
        mirrored = ratio < 0
        codes = requantize(x.astype(np.int64) - in_q.zero_point, 0, multiplier, shift,
                           np.where(mirrored, high - offset, offset), np.where(mirrored, 0, low),
                           np.where(mirrored, high - low, high))
        return np.where(mirrored, np.uint8(high) - codes, codes)

    def _channel_scale(self, layer: Layer, tensors, stats):
        """``x * gate`` for a gate ``[N, C, 1, 1]`` (squeeze-excite): the exact product of the centred codes,
        requantized by ``x_scale * gate_scale / out_scale`` in the post-processor's fixed point (half up)."""
        x, gate = (tensors[name] for name in layer.inputs)
        x_q, gate_q = (self._q(name) for name in layer.inputs)
        product = (x.astype(np.int64) - x_q.zero_point) * (gate.astype(np.int64) - gate_q.zero_point)
        return _rescale(product, x_q.scale * gate_q.scale / layer.out_q.scale, layer.out_q.zero_point)

    def _fc_quantized(self, layer: Layer, tensors, stats):
        """A product of each image's features, or with ``pointwise`` of every position's channels-last row."""
        x = tensors[layer.inputs[0]]
        rows = x.reshape(-1, x.shape[-1]) if layer.attrs.get("pointwise") else x.reshape(len(x), -1)
        requant = self._layer_requantization(layer)
        out = self.gemm(rows, layer.arrays["weight"], layer.attrs["in_zero_point"], requant, stats, (layer.name,),
                        layer.arrays.get("table"))
        return out.reshape(*x.shape[:-1], -1) if layer.attrs.get("pointwise") else out

    def _clamp(self, layer: Layer, tensors, stats):
        low, high = layer.attrs["clamp"]
        return np.clip(tensors[layer.inputs[0]], low, high)

    def _gap(self, layer: Layer, tensors, stats):
        """Channel means, as onnxruntime's QLinearGlobalAveragePool computes them: the post-processor's float32
        mode (half to even). On the accelerator (where the compiler placed it) as a :class:`GlobalPoolProgram`;
        on the host without an executor, or where the configuration or the program cannot (its ``stats`` then say
        ``host``)."""
        x = tensors[layer.inputs[0]]
        in_q, out_q = self._q(layer.inputs[0]), layer.out_q
        n, c, h, w = x.shape
        significand, shift = float32_significand(in_q.scale / (out_q.scale * h * w))
        if stats.placement == "accelerator" and global_pool_limit(self.config, h * w) is not None:
            stats.placement = "host"
        if stats.placement == "accelerator" and self.executor is not None:
            requant = Requantization(np.zeros(c, np.int64), np.full(c, significand), np.full(c, shift),
                                     out_zero_point=out_q.zero_point, clamp_min=0, clamp_max=255, float32_scale=True)
            out = self.gemm(x.transpose(0, 2, 3, 1), None, in_q.zero_point, requant, stats, (layer.name,),
                            kind=GlobalPoolProgram)
            return out.reshape(n, c, 1, 1)
        sums = (x.astype(np.int64) - in_q.zero_point).reshape(n, c, -1).sum(axis=2)
        return requantize(sums, 0, significand, shift, out_q.zero_point, 0, 255,
                          float32_scale=True).reshape(n, c, 1, 1)

    def _maxpool(self, layer: Layer, tensors, stats):
        """Each window's largest code, the padding counting as 0 (uint8's minimum): on the accelerator (where the
        compiler placed it) as a :class:`DepthwiseProgram` of unit weights whose taps keep the larger product
        (COMPUTE's ``maximum``) with zero point 0, so that products are the codes themselves and the STOREs write
        them back unchanged; on the host without an executor, or where the configuration or window LOADs cannot
        (its ``stats`` then say ``host``)."""
        x = tensors[layer.inputs[0]]
        a = layer.attrs
        pads = _pool_pads(x.shape[2:], a)
        c = x.shape[1]
        if stats.placement == "accelerator" and not self.config.max_pool:
            stats.placement = "host"
        identity = Requantization(np.zeros(c, np.int64), np.ones(c, np.int64), np.zeros(c, np.int64),
                                  out_zero_point=0, clamp_min=0, clamp_max=255)
        pooled = self._pool_program(layer, x, tuple(pads), identity, 0, stats, maximum=True)
        if pooled is not None:
            return pooled
        patches, ho, wo = im2col(x, a["kernel"], a["strides"], pads, [1, 1], 0)  # 0 is uint8's minimum
        kk = a["kernel"][0] * a["kernel"][1]
        return _channels_first(patches.reshape(-1, kk, x.shape[1]).max(axis=1), len(x), ho, wo)

    def _avgpool(self, layer: Layer, tensors, stats):
        """Window sums over the count of taps onnxruntime divides by: inside the image, or also in the
        explicit pads with ``count_include_pad``, and in what ``ceil_mode`` adds only with ``count_ceil_pad``
        (QLinearAveragePool's kernel counts them, AveragePool's does not)."""
        x = tensors[layer.inputs[0]]
        a = layer.attrs
        in_q, out_q = self._q(layer.inputs[0]), layer.out_q
        pads = _pool_pads(x.shape[2:], a)
        kk = a["kernel"][0] * a["kernel"][1]
        if stats.placement == "accelerator":
            multiplier, shift = quantize_multiplier(in_q.scale / (out_q.scale * kk))
            c = x.shape[1]
            requant = Requantization(np.zeros(c, np.int64), np.full(c, multiplier), np.full(c, shift),
                                     out_zero_point=out_q.zero_point, clamp_min=0, clamp_max=255)
            pooled = self._pool_program(layer, x, tuple(pads), requant, in_q.zero_point, stats)
            if pooled is not None:
                return pooled
        centred = x.astype(np.int64) - in_q.zero_point
        patches, ho, wo = im2col(centred, a["kernel"], a["strides"], pads, [1, 1], 0)
        sums = _channels_first(patches.reshape(-1, kk, x.shape[1]).sum(axis=1), len(x), ho, wo)
        if uniform_pool(x.shape[2:], a):
            counts = np.full(sums.shape, kk)
        else:
            counted = np.ones(x.shape[2:], np.int64)
            if a["count_include_pad"]:
                top, left, bottom, right = a["pads"]
                counted = np.pad(counted, ((top, bottom), (left, right)), constant_values=1)
                pads = [0, 0, pads[2] - bottom, pads[3] - right]
            ones, _, _ = im2col(counted[None], a["kernel"], a["strides"], pads, [1, 1], 0)
            counts = np.broadcast_to(ones.sum(axis=1).reshape(1, 1, ho, wo), sums.shape)
        out = np.empty(sums.shape, np.uint8)
        for count in np.unique(counts):
            mask = counts == count
            out[mask] = _rescale(sums[mask], in_q.scale / (out_q.scale * count), out_q.zero_point)
        return out

    def _pool_program(self, layer: Layer, x: np.ndarray, pads: tuple, requant: Requantization, zero_point: int,
                      stats: LayerStats, **options) -> np.ndarray | None:
        """A pool placed on the accelerator as a :class:`DepthwiseProgram` of unit weights (an average pool whose
        windows all divide by the whole kernel, requantized by its one ratio; a max pool, ``maximum``); ``None``
        where its ``stats`` say ``host``, without an executor, or where window LOADs cannot express it (its ``stats``
        then say ``host``)."""
        n, c = x.shape[:2]
        kernel = tuple(layer.attrs["kernel"])
        windows = ConvolutionInput(x.transpose(0, 2, 3, 1), kernel, tuple(layer.attrs["strides"]), pads)
        if depthwise_limit(self.config, windows) is not None:
            stats.placement = "host"
        if stats.placement != "accelerator" or self.executor is None:
            return None
        stats.lowering = "windows"
        out = self.gemm(windows, np.ones((c, *kernel), np.int8), zero_point, requant, stats, (layer.name,),
                        kind=DepthwiseProgram, **options)
        return _channels_first(out.view(np.uint8), n, *windows.out_size)

    def _reshape(self, layer: Layer, tensors, stats):
        """The codes in the output's shape; a flatten that products read in channels-last order
        (``channels_last``) takes the map's bytes as they lie (its readers' weight rows follow that order)."""
        x = tensors[layer.inputs[0]]
        if "channels_last" in layer.attrs:
            return x.transpose(0, 2, 3, 1).reshape(len(x), -1)
        return x.reshape(len(x), *layer.attrs["shape"][1:])

    def _pad(self, layer: Layer, tensors, stats):
        a = layer.attrs
        widths = list(zip(a["before"], a["after"]))
        if a["mode"] == "constant":
            return np.pad(tensors[layer.inputs[0]], widths, constant_values=a["value"])
        return np.pad(tensors[layer.inputs[0]], widths, mode=a["mode"])

    def _transpose(self, layer: Layer, tensors, stats):
        return tensors[layer.inputs[0]].transpose(layer.attrs["perm"])

    def _lut(self, layer: Layer, tensors, stats):
        """A unary function of 8-bit codes as its table of 256 output codes (or one per channel, ``[C, 256]``, along
        the attribute ``axis``); a table looked up by the STOREs of the
        convolution whose Add it alone reads (:mod:`~mvu.host.runtime.fused_adds`) takes what that Add handed on."""
        if layer.name in self._looked_up:
            stats.placement = FUSED_TABLE
            return tensors.pop(self._looked_up.pop(layer.name))
        table, x = layer.arrays["table"], tensors[layer.inputs[0]]
        if table.ndim == 1:
            return table[x]
        channels = np.arange(len(table)).reshape([-1 if axis == layer.attrs["axis"] else 1 for axis in range(x.ndim)])
        return table[channels, x]  # one table per channel along ``axis``

    def _layernorm(self, layer: Layer, tensors, stats):
        """Normalized over the axes from ``axis`` on, in float64 from the dequantized codes."""
        x = self._q(layer.inputs[0]).dequantize(tensors[layer.inputs[0]]).astype(np.float64)
        axes = tuple(range(layer.attrs["axis"], x.ndim))
        centred = x - x.mean(axis=axes, keepdims=True)
        normal = centred / np.sqrt((centred ** 2).mean(axis=axes, keepdims=True) + layer.attrs["epsilon"])
        return layer.out_q.quantize(normal * layer.arrays["gamma"] + layer.arrays["beta"])

    def _l2norm(self, layer: Layer, tensors, stats):
        """``x / ||x||`` over the channels (0 where the norm is 0) times a per-channel scale, in float64 from the
        dequantized codes."""
        x = self._q(layer.inputs[0]).dequantize(tensors[layer.inputs[0]]).astype(np.float64)
        norm = np.sqrt(np.square(x).sum(axis=1, keepdims=True))
        scale = layer.arrays["scale"].astype(np.float64).reshape(1, -1, *(1,) * (x.ndim - 2))
        return layer.out_q.quantize(np.divide(x, norm, out=np.zeros_like(x), where=norm > 0) * scale)

    def _concat(self, layer: Layer, tensors, stats):
        """The inputs side by side, each requantized to the output's quantization (none to do for a view: a network
        program lays them side by side by addressing)."""
        out_q = layer.out_q
        if layer.placement == VIEW:
            return np.concatenate([tensors[name] for name in layer.inputs], axis=layer.attrs["axis"])
        parts = []
        for name in layer.inputs:
            q = self._q(name)
            parts.append(_rescale(tensors[name].astype(np.int64) - q.zero_point, q.scale / out_q.scale,
                                  out_q.zero_point))
        return np.concatenate(parts, axis=layer.attrs["axis"])

    def _fc(self, layer: Layer, tensors, stats):
        x = tensors[layer.inputs[0]]
        x = x.reshape(len(x), -1)
        in_q = self._q(layer.inputs[0])
        acc = self.gemm(x, layer.arrays["weight"], layer.attrs["in_zero_point"], None, stats, (layer.name,))
        acc = acc.astype(np.int64) + layer.arrays["bias"]
        return (acc * (in_q.scale * layer.arrays["w_scale"])).astype(np.float32)

    def _dequantize(self, layer: Layer, tensors, stats):
        x = tensors[layer.inputs[0]]
        return layer.out_q.dequantize(x).reshape(len(x), -1)

    def _softmax(self, layer: Layer, tensors, stats):
        return softmax(tensors[layer.inputs[0]]).astype(np.float32)
