"""Read PyTorch checkpoints (``torch.save`` files) into numpy arrays, without torch.

Both on-disk formats are supported:

* **legacy** (torch < 1.6, and ``_use_new_zipfile_serialization=False``): five pickles in a row --
  magic number, protocol version, system info, the object itself (its persistent ids name storages),
  the list of storage keys -- followed by each storage's raw bytes, in key order, each preceded by
  its element count as an 8-byte little-endian integer.
* **zip** (torch >= 1.6): ``<name>/data.pkl`` holds the object, ``<name>/data/<key>`` each storage's
  raw bytes, ``<name>/byteorder`` the byte order (little when absent).

A checkpoint is untrusted input: unpickling uses a restricted :class:`pickle.Unpickler` whose
``find_class`` allows only ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and the
typed storage classes (``torch.FloatStorage`` ...), each replaced by a harmless stand-in; anything else
raises :class:`UnsafeCheckpointError` naming the ``module.name`` that was asked for.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["UnsafeCheckpointError", "load", "load_state_dict"]

#: First pickle of a legacy file, and the protocol version that follows it.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

#: Typed storage class name (in module ``torch``) -> element dtype (little-endian).
STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint asks for a Python object outside the allowed set (or is malformed)."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a ``torch.<X>Storage`` class: only its element dtype matters."""

    name: str
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    """A storage named by a persistent id; its bytes are read once the object pickle is done."""

    key: str
    dtype: np.dtype
    numel: int
    view: tuple[str, int, int] | None = None  # legacy storage views: (root key, offset, size)


@dataclass(frozen=True)
class _PendingTensor:
    """What ``_rebuild_tensor_v2`` returns; turned into an ndarray by :func:`_materialize`."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records the view, reads nothing."""
    if not isinstance(storage, _StorageRef):
        raise UnsafeCheckpointError(f"tensor storage is {type(storage).__name__}, not a persistent storage id")
    ints = (storage_offset, *size, *stride)
    if not all(isinstance(v, int) and v >= 0 for v in ints) or len(size) != len(stride):
        raise UnsafeCheckpointError(f"bad tensor geometry: offset {storage_offset}, size {size}, stride {stride}")
    return _PendingTensor(storage, storage_offset, tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allowed globals and storage persistent ids."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        raise UnsafeCheckpointError(f"checkpoint refers to {module}.{name}, which is not allowed "
                                    "(only collections.OrderedDict, torch._utils._rebuild_tensor_v2 and "
                                    "torch.*Storage types are)")

    def persistent_load(self, pid):
        # legacy: ('storage', type, key, location, numel, view_metadata); zip: the same without the view.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"unsupported persistent id {pid!r:.200}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) \
                or not isinstance(numel, int) or numel < 0:
            raise UnsafeCheckpointError(f"malformed storage id {pid!r:.200}")
        if view is not None:
            if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                    and all(isinstance(v, int) and v >= 0 for v in view[1:])):
                raise UnsafeCheckpointError(f"malformed storage view {view!r:.200}")
            view = (view[0], view[1], view[2])
        return _StorageRef(key, storage_type.dtype, numel, view)


def _unpickle(data: bytes | BinaryIO) -> tuple[Any, list[_StorageRef]]:
    """Unpickle one object with the restricted unpickler; also return the storages it named."""
    refs: list[_StorageRef] = []

    class _Recording(_RestrictedUnpickler):
        def persistent_load(self, pid):
            ref = super().persistent_load(pid)
            refs.append(ref)
            return ref

    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    return _Recording(stream, encoding="utf-8").load(), refs


def _tensor(array: np.ndarray, t: _PendingTensor) -> np.ndarray:
    """The (offset, size, stride) view of a storage's 1-D array, as a fresh C-contiguous array."""
    count = int(np.prod(t.size, dtype=np.int64))
    if count == 0:
        return np.zeros(t.size, array.dtype)
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if last >= array.size:
        raise UnsafeCheckpointError(f"tensor view (offset {t.offset}, size {t.size}, stride {t.stride}) "
                                    f"runs past its storage of {array.size} elements")
    contiguous = tuple(int(np.prod(t.size[i + 1:], dtype=np.int64)) for i in range(len(t.size)))
    if all(n == 1 or s == c for n, s, c in zip(t.size, t.stride, contiguous)):
        return array[t.offset:t.offset + count].reshape(t.size).copy()
    base = array[t.offset:]
    strides = tuple(s * array.itemsize for s in t.stride)
    return np.ascontiguousarray(as_strided(base, shape=t.size, strides=strides, writeable=False))


def _materialize(obj: Any, storages: dict[str, np.ndarray]) -> Any:
    """Replace every pending tensor in dicts / lists / tuples by its ndarray."""
    if isinstance(obj, _PendingTensor):
        ref = obj.storage
        root = storages[ref.view[0] if ref.view else ref.key]
        if ref.view:
            root = root[ref.view[1]:ref.view[1] + ref.view[2]]
        return _tensor(root, obj)
    if isinstance(obj, dict):
        out = type(obj)((k, _materialize(v, storages)) for k, v in obj.items())
        if hasattr(obj, "__dict__"):
            out.__dict__.update(obj.__dict__)  # e.g. a state_dict's _metadata
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, storages) for v in obj)
    return obj


def _load_legacy(f: BinaryIO, file_size: int) -> Any:
    try:
        magic, _ = _unpickle(f)
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise UnsafeCheckpointError(f"not a PyTorch checkpoint (neither zip nor legacy format): {error}") from None
    if magic != LEGACY_MAGIC:
        raise UnsafeCheckpointError("not a PyTorch checkpoint (bad magic number)")
    protocol, _ = _unpickle(f)
    if protocol != LEGACY_PROTOCOL:
        raise UnsafeCheckpointError(f"unsupported legacy protocol version {protocol!r:.50}")
    sys_info, _ = _unpickle(f)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise UnsafeCheckpointError("big-endian legacy checkpoints are not supported")
    obj, refs = _unpickle(f)
    keys, _ = _unpickle(f)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise UnsafeCheckpointError("malformed storage key list")
    dtypes = {r.key if r.view is None else r.view[0]: r.dtype for r in refs}
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        if key not in dtypes:
            raise UnsafeCheckpointError(f"storage {key} is not referenced by any tensor")
        header = f.read(8)
        if len(header) != 8:
            raise UnsafeCheckpointError(f"storage {key}: file truncated")
        (count,) = struct.unpack("<q", header)
        nbytes = count * dtypes[key].itemsize
        if count < 0 or nbytes > file_size - f.tell():
            raise UnsafeCheckpointError(f"storage {key}: {count} elements run past the end of the file")
        storages[key] = np.frombuffer(f.read(nbytes), dtypes[key])
    missing = set(dtypes) - storages.keys()
    if missing:
        raise UnsafeCheckpointError(f"storages {sorted(missing)[:5]} are referenced but not stored")
    return _materialize(obj, storages)


def _load_zip(path: str | os.PathLike) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise UnsafeCheckpointError(f"zip checkpoint without a single <name>/data.pkl: {names[:5]}")
        prefix = pkl[0][: -len("data.pkl")]
        big = prefix + "byteorder" in names and archive.read(prefix + "byteorder").strip() == b"big"
        obj, refs = _unpickle(archive.read(pkl[0]))
        storages = {}
        for ref in refs:
            key = ref.view[0] if ref.view else ref.key
            if key not in storages:
                dtype = ref.dtype.newbyteorder(">") if big else ref.dtype
                try:
                    raw = archive.read(f"{prefix}data/{key}")
                except KeyError:
                    raise UnsafeCheckpointError(f"storage {key} is referenced but not stored") from None
                usable = len(raw) // dtype.itemsize * dtype.itemsize
                storages[key] = np.frombuffer(raw[:usable], dtype).astype(dtype.newbyteorder("="))
    return _materialize(obj, storages)


def load(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` file (zip or legacy); tensors come back as numpy arrays."""
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        return _load_legacy(f, os.fstat(f.fileno()).st_size)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a checkpoint holding a state dict: parameter / buffer name -> numpy array."""
    obj = load(path)
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict of tensors (got {type(obj).__name__})")
    return dict(obj)
