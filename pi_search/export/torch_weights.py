"""Reads a PyTorch legacy-format ``.pth`` state dict into numpy arrays, without PyTorch."""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass
class _Storage:
    dtype: type
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self) -> np.ndarray:
        assert self.storage.data is not None
        base = self.storage.data[self.offset :]
        item = base.itemsize
        return np.lib.stride_tricks.as_strided(
            base, shape=self.size, strides=tuple(s * item for s in self.stride)
        ).copy()


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a weights file")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel, *_view = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(_STORAGE_DTYPES[storage_type])
        return self.storages[key]


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return ``{name: array}`` from a legacy (non-zip) PyTorch checkpoint; arrays keep PyTorch layouts."""
    with open(path, "rb") as f:
        if pickle.load(f) != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy PyTorch checkpoint")
        pickle.load(f)  # protocol version
        pickle.load(f)  # system info
        unpickler = _Unpickler(f)
        state = unpickler.load()
        keys = pickle.load(f)
        for key in keys:
            storage = unpickler.storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            nbytes = numel * np.dtype(storage.dtype).itemsize
            storage.data = np.frombuffer(f.read(nbytes), dtype=storage.dtype)
    return {name: ref.to_numpy() for name, ref in state.items() if isinstance(ref, _TensorRef)}
