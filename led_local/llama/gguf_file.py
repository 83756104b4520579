"""A fast, read-only GGUF header reader (format v2/v3) over a memory map.

``gguf.GGUFReader`` builds a numpy view per array element, which takes seconds on a 262k-token
vocabulary; led-local only needs the scalar metadata, array lengths and the tensor table, so it
reads those directly and leaves tensor data in the map until a tensor is asked for.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from led_local.errors import LedError

# GGUF value types -> struct format of a scalar (8 = string, 9 = array)
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
SMALL_ARRAY = 64  # numeric arrays up to this length are read; longer ones only counted
MAX_NESTING = 8  # arrays of arrays deeper than this are refused


def damaged(path: str | os.PathLike, what: str) -> LedError:
    """The error for malformed metadata: names the file and what is wrong (the key)."""
    return LedError(f"damaged or unsupported GGUF {path}: {what}")


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array too long (or of strings) to be worth reading: its type, its length
    and, for strings, the longest one's size in bytes."""

    elem_type: int
    count: int
    max_bytes: int = 0


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: numpy-order shape (reversed ggml ne), ggml type, absolute offset, bytes."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    n_bytes: int


class _Nested(Exception):
    """Arrays nested past MAX_NESTING."""


class GGUFFile:
    """Metadata (``fields``) and tensor table (``tensors``) of a GGUF file.

    Raises LedError for a file that is not GGUF or whose header is cut short.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        self.path = Path(path)
        with self.path.open("rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.size = len(self._map)
        self._pos = 0
        try:
            if self._read(4) != b"GGUF":
                raise LedError(f"not a GGUF file: {self.path}")
            version, n_tensors, n_kv = self._unpack("<I"), self._unpack("<Q"), self._unpack("<Q")
            if version not in (2, 3):
                raise LedError(f"unsupported GGUF version {version}: {self.path}")
            self.fields: dict[str, object] = {}
            key = "(header)"
            for _ in range(n_kv):
                key = "(a key name)"
                key = self._string()
                self.fields[key] = self._value(self._unpack("<I"), depth=0)
            key = "(the tensor table)"
            raw = []
            for _ in range(n_tensors):
                name = self._string()
                dims = [self._unpack("<Q") for _ in range(self._unpack("<I"))]
                raw.append((name, dims, self._unpack("<I"), self._unpack("<Q")))
        except (struct.error, IndexError, UnicodeDecodeError, OverflowError):
            raise LedError(f"corrupt or truncated GGUF header: {self.path} (at {key})") from None
        except _Nested:
            raise damaged(self.path, f"key {key!r} nests arrays more than {MAX_NESTING} "
                          "deep") from None
        align = self.fields.get("general.alignment", 32)
        if not isinstance(align, int) or isinstance(align, bool) or align < 1 or \
                align & (align - 1):
            raise damaged(self.path, f"key 'general.alignment' must be a positive power of "
                          f"two, got {align!r}")
        data_start = (self._pos + align - 1) // align * align
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, gtype, off in raw:
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(gtype)]
            except (ValueError, KeyError):
                raise LedError(
                    f"tensor {name} has unknown ggml type {gtype}: {self.path}") from None
            n = math.prod(dims)
            self.tensors[name] = TensorInfo(name, tuple(reversed(dims)), gtype,
                                            data_start + off, n // block * type_size)

    def _read(self, n: int) -> bytes:
        if self._pos + n > self.size:
            raise IndexError("past end")
        b = self._map[self._pos:self._pos + n]
        self._pos += n
        return b

    def _unpack(self, fmt: str):
        (v,) = struct.unpack_from(fmt, self._map, self._pos)
        self._pos += struct.calcsize(fmt)
        return v

    def _string(self) -> str:
        return self._read(self._unpack("<Q")).decode("utf-8")

    def _value(self, vtype: int, *, depth: int):
        if vtype in _SCALAR:
            return self._unpack(_SCALAR[vtype])
        if vtype == _STRING:
            return self._string()
        if vtype != _ARRAY:
            raise IndexError(f"bad value type {vtype}")
        if depth >= MAX_NESTING:
            raise _Nested
        etype, count = self._unpack("<I"), self._unpack("<Q")
        longest = 0
        if etype in _SCALAR and count <= SMALL_ARRAY:
            return [self._unpack(_SCALAR[etype]) for _ in range(count)]
        if etype in _SCALAR:
            self._pos += struct.calcsize(_SCALAR[etype]) * count
        elif etype == _STRING:
            for _ in range(count):
                n = struct.unpack_from("<Q", self._map, self._pos)[0]
                longest = max(longest, n)
                self._pos += 8 + n
                if self._pos > self.size:
                    raise IndexError("past end")
        else:
            for _ in range(count):
                self._value(etype, depth=depth + 1)
        if self._pos > self.size:
            raise IndexError("past end")
        return ArrayInfo(etype, count, longest)

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The raw bytes of tensor ``name`` (uint8 view of the map, no copy)."""
        t = self.tensors[name]
        return np.frombuffer(self._map, np.uint8, t.n_bytes, t.offset)
