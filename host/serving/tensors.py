"""Protocol-neutral inference requests and results, tensor datatypes and the BYTES element encoding."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np

from mvu.host.serving.errors import ServingError

__all__ = ["DATATYPES", "MAX_ELEMENTS", "InputTensor", "RequestedOutput", "InferenceRequest", "OutputTensor",
           "InferenceResult", "check_shape", "decode_bytes_elements", "encode_bytes_elements", "numeric_array",
           "numpy_datatype", "server_timing", "split_bytes_elements"]

#: Open Inference Protocol datatype -> numpy dtype (BYTES elements are Python bytes in an object array).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

#: The most elements a tensor may have: more than any request can carry, few enough that numpy can shape it
#: (the product of the non-zero dimensions, so that a zero-size tensor cannot name absurd ones either).
MAX_ELEMENTS = 1 << 32


def numpy_datatype(datatype: str) -> np.dtype:
    """The numpy dtype of an Open Inference Protocol datatype; a 400 for an unknown one."""
    try:
        return DATATYPES[datatype]
    except (KeyError, TypeError):
        raise ServingError(400, f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}") from None


def check_shape(name: str, shape) -> tuple[int, ...]:
    """A tensor's shape as a tuple of non-negative ints, or a 400 naming the tensor."""
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ServingError(400, f"input {name!r}: shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise ServingError(400, f"input {name!r}: negative dimension in shape {list(shape)}")
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise ServingError(400, f"input {name!r}: shape {list(shape)} is too large (its non-zero dimensions "
                                f"multiply to more than {MAX_ELEMENTS})")
    return tuple(shape)


def split_bytes_elements(buffer: bytes | memoryview) -> list[bytes]:
    """BYTES tensor data in the binary encoding (each element a 4-byte little-endian length, then its
    bytes) as its elements; ValueError when it is cut short. Server and client both read it so."""
    view, elements, offset = memoryview(buffer), [], 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise ValueError(f"truncated BYTES element length at byte {offset}")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise ValueError(f"truncated BYTES data: an element of {length} bytes at byte {offset} runs past "
                             f"the end of the {len(view)}-byte buffer")
        elements.append(bytes(view[offset:offset + length]))
        offset += length
    return elements


def decode_bytes_elements(name: str, buffer: bytes | memoryview, count: int) -> list[bytes]:
    """:func:`split_bytes_elements` for an input of ``count`` elements; 400s name the input."""
    try:
        elements = split_bytes_elements(buffer)
    except ValueError as error:
        raise ServingError(400, f"input {name!r}: {error}") from None
    if len(elements) != count:
        raise ServingError(400, f"input {name!r}: {len(elements)} BYTES elements for a shape of {count} elements")
    return elements


def encode_bytes_elements(elements) -> bytes:
    """The inverse of :func:`split_bytes_elements` (str elements are encoded as UTF-8)."""
    parts = []
    for element in elements:
        data = element if isinstance(element, bytes) else str(element).encode()
        parts += [struct.pack("<I", len(data)), data]
    return b"".join(parts)


@dataclass
class InputTensor:
    """One input: ``data`` is a numpy array of ``shape`` (BYTES: an object array of bytes)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray

    @classmethod
    def from_values(cls, name: str, datatype: str, shape, values) -> "InputTensor":
        """From a flat or nested sequence (JSON ``data``), checking the element count against the shape."""
        shape = check_shape(name, shape)
        dtype = numpy_datatype(datatype)
        count = math.prod(shape)
        if datatype == "BYTES":
            array = _bytes_array(name, values)
        else:
            array = numeric_array(values, dtype, f"input {name!r}: data is not {datatype}").reshape(-1)
        if array.size != count:
            raise ServingError(400, f"input {name!r}: {array.size} elements for shape {list(shape)} "
                                    f"({count} elements)")
        return cls(name, datatype, shape, array.reshape(shape))

    @classmethod
    def from_buffer(cls, name: str, datatype: str, shape, buffer: bytes | memoryview) -> "InputTensor":
        """From raw little-endian bytes (binary extension, gRPC raw contents), checking the size."""
        shape = check_shape(name, shape)
        dtype = numpy_datatype(datatype)
        count = math.prod(shape)
        if datatype == "BYTES":  # decoded first: the buffer, not the claimed shape, bounds the allocation
            elements = decode_bytes_elements(name, buffer, count)
            array = np.empty(len(elements), dtype=object)
            array[:] = elements
            return cls(name, datatype, shape, array.reshape(shape))
        expected = count * dtype.itemsize
        if len(buffer) != expected:
            raise ServingError(400, f"input {name!r}: {len(buffer)} bytes of data for {datatype} {list(shape)} "
                                    f"(expected {expected})")
        return cls(name, datatype, shape, np.frombuffer(buffer, dtype=dtype.newbyteorder("<")).reshape(shape))


def numeric_array(values, dtype: np.dtype, what: str) -> np.ndarray:
    """JSON numbers, flat or in nested lists, as an array of ``dtype``; a 400 starting with ``what`` says why
    they are not: a value out of the type's range (1e39 as FP32: not inf and a warning), lists of different
    lengths, or a value that is not a number."""
    try:
        with np.errstate(over="raise", invalid="raise"):
            return np.asarray(values, dtype=dtype)
    except (OverflowError, FloatingPointError):
        reason = "a value is out of its range"
    except (TypeError, ValueError):
        reason = _not_numeric(values)
    raise ServingError(400, f"{what}: {reason}")


def _not_numeric(values) -> str:
    """Why nested lists that numpy refused are no array of numbers (their nesting is known to be bounded)."""
    level = [values]
    while lists := [v for v in level if isinstance(v, (list, tuple))]:
        if len(lists) != len(level) or len({len(v) for v in lists}) > 1:
            return "its lists are not all of one length (the data must be a rectangular array)"
        level = [item for v in lists for item in v]
    return "it holds a value that is not a number"


def _bytes_array(name: str, values) -> np.ndarray:
    """JSON BYTES data (strings, flat or nested) as a flat object array of UTF-8 bytes."""
    flat = list(_flatten(values))
    if not all(isinstance(v, (bytes, str)) for v in flat):
        raise ServingError(400, f"input {name!r}: BYTES data must be strings")
    array = np.empty(len(flat), dtype=object)
    try:
        array[:] = [v.encode() if isinstance(v, str) else v for v in flat]
    except UnicodeEncodeError:
        raise ServingError(400, f"input {name!r}: BYTES data must be valid Unicode (no lone surrogates)") from None
    return array


def _flatten(values):
    """Leaves of nested lists in order, without recursion (nesting depth is the client's choice)."""
    stack = [iter([values])]
    while stack:
        for value in stack[-1]:
            if isinstance(value, (list, tuple)):
                stack.append(iter(value))
                break
            yield value
        else:
            stack.pop()


@dataclass
class RequestedOutput:
    """An output the client asked for; ``classification`` asks for the top-k classes as BYTES."""

    name: str
    classification: int = 0
    binary: bool | None = None  # None: the request's default


@dataclass
class InferenceRequest:
    model_name: str
    model_version: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    id: str | None = None
    timeout: float | None = None  # seconds; None: the server's limit


@dataclass
class OutputTensor:
    name: str
    datatype: str
    data: np.ndarray  # BYTES: an object array of bytes

    @property
    def shape(self) -> list[int]:
        return list(self.data.shape)

    def to_bytes(self) -> bytes:
        """Raw little-endian contents (BYTES: length-prefixed elements)."""
        if self.datatype == "BYTES":
            return encode_bytes_elements(self.data.reshape(-1))
        return np.ascontiguousarray(self.data, dtype=self.data.dtype.newbyteorder("<")).tobytes()

    def to_list(self) -> list:
        """Flat row-major values for JSON."""
        if self.datatype == "BYTES":
            return [v.decode(errors="replace") for v in self.data.reshape(-1)]
        return self.data.reshape(-1).tolist()


@dataclass
class InferenceResult:
    model_name: str
    model_version: str
    outputs: list[OutputTensor]
    id: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)  # queue, preprocess, executor, total
    cycles: int = 0
    batch_size: int = 1

    def server_timing(self) -> str:
        """The W3C ``Server-Timing`` header value."""
        return server_timing(self.timings_ms)


def server_timing(timings_ms: dict[str, float]) -> str:
    """``{"queue": 0.1}`` -> ``"queue;dur=0.100"``: the W3C ``Server-Timing`` header value."""
    return ", ".join(f"{name};dur={value:.3f}" for name, value in timings_ms.items())
