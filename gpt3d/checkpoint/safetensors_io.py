"""Streaming safetensors files: written one tensor at a time (the header is known up front), read by byte ranges.

Both sides use plain file I/O on numpy arrays (no mmap, no torch), so converting a checkpoint holds one tensor in
memory at a time and the page cache, not the process, keeps what was read. The files are standard safetensors:
`safetensors.safe_open` and Hugging Face read them. A SHA-256 of the whole file is computed while writing.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from .errors import CheckpointError

# safetensors dtype -> numpy storage dtype (bf16 has no numpy dtype: stored and moved as raw 16-bit words)
STORAGE = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
NUMPY_TO_DTYPE = {np.dtype(v): k for k, v in STORAGE.items() if k != "BF16"}
MAX_HEADER = 100 * 1024 * 1024
HASH_CHUNK = 16 * 1024 * 1024


def dtype_of(array: np.ndarray) -> str:
    try:
        return NUMPY_TO_DTYPE[array.dtype]
    except KeyError:
        raise CheckpointError(f"cannot store numpy dtype {array.dtype} in a checkpoint") from None


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def nbytes_of(dtype: str, shape: Iterable[int]) -> int:
    return _numel(shape) * np.dtype(STORAGE[dtype]).itemsize


class SafetensorsWriter:
    """Write `entries` [(name, dtype, shape)] in that order; `write(name, array)` streams one tensor at a time."""

    def __init__(self, path: str | os.PathLike, entries: list[tuple[str, str, tuple[int, ...]]],
                 metadata: Optional[dict[str, str]] = None):
        self.path = Path(path)
        header: dict = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        self._expected = []
        for name, dtype, shape in entries:
            n = nbytes_of(dtype, shape)
            header[name] = {"dtype": dtype, "shape": [int(s) for s in shape], "data_offsets": [offset, offset + n]}
            self._expected.append((name, dtype, tuple(int(s) for s in shape)))
            offset += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        self._hash = hashlib.sha256()
        self._file = open(self.path, "wb")
        self._put(struct.pack("<Q", len(raw)) + raw)
        self._next = 0
        self.size = 8 + len(raw) + offset

    def _put(self, data) -> None:
        try:
            self._file.write(data)
        except OSError as exc:  # name the file: a bare write error (disk full) carries no path
            raise with_path(exc, self.path) from None
        self._hash.update(data)

    def write(self, name: str, array: np.ndarray) -> None:
        exp_name, dtype, shape = self._expected[self._next]
        array = np.ascontiguousarray(array)
        if name != exp_name or tuple(array.shape) != shape or array.dtype != np.dtype(STORAGE[dtype]):
            raise CheckpointError(f"{self.path}: writer expected {exp_name} {dtype} {list(shape)}, got {name} "
                                  f"{array.dtype} {list(array.shape)}")
        self._put(memoryview(array.reshape(-1)).cast("B"))
        self._next += 1

    def close(self) -> tuple[str, int]:
        """Flush and fsync; returns (sha256 hex, size in bytes)."""
        if self._next != len(self._expected):
            missing = [e[0] for e in self._expected[self._next:]]
            self._file.close()
            raise CheckpointError(f"{self.path}: closed before writing {missing[:3]}...")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:
            raise with_path(exc, self.path) from None
        return self._hash.hexdigest(), self.size

    def abort(self) -> None:
        try:
            self._file.close()  # flushing what is buffered can fail again on a full disk
        except OSError:
            pass


class SafetensorsReader:
    """Reads whole tensors, row ranges (dim 0) or flat element ranges by seeking; validates the header first."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot open ({exc.strerror}); the checkpoint is incomplete") from None
        size = os.fstat(self._file.fileno()).st_size
        head = self._file.read(8)
        if len(head) < 8:
            raise self._bad(f"only {size} bytes: truncated")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise self._bad(f"header length {n} does not fit the {size}-byte file: truncated or not safetensors")
        try:
            header = json.loads(self._file.read(n))
        except ValueError:
            raise self._bad("header is not valid JSON: corrupted") from None
        if not isinstance(header, dict):
            raise self._bad("header is not a JSON object: corrupted")
        self.metadata = header.pop("__metadata__", {}) or {}
        self.data_start = 8 + n
        self.tensors: dict[str, dict] = header
        end = 0
        for name, t in sorted(header.items(), key=lambda kv: _offsets(kv[1])):
            lo, hi = _offsets(t)
            if t.get("dtype") not in STORAGE or not _is_shape(t.get("shape")) or lo < end or \
                    hi - lo != nbytes_of(t["dtype"], t["shape"]):
                raise self._bad(f"header entry {name!r} ({t}) is not a tensor of its own bytes: corrupted")
            end = hi
        if self.data_start + end > size:
            raise self._bad(f"tensor data ends at byte {self.data_start + end} but the file has {size}: truncated")

    def _bad(self, what: str) -> CheckpointError:
        self._file.close()
        return CheckpointError(f"{self.path}: {what}; restore the file or resume from another checkpoint")

    def close(self) -> None:
        self._file.close()

    def _info(self, name: str) -> tuple[np.dtype, tuple[int, ...], int]:
        try:
            t = self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: has no tensor {name!r} although the checkpoint metadata says so; "
                                  f"the file does not belong to this checkpoint") from None
        return np.dtype(STORAGE[t["dtype"]]), tuple(t["shape"]), self.data_start + t["data_offsets"][0]

    def _read_into(self, out: np.ndarray, byte_offset: int) -> np.ndarray:
        self._file.seek(byte_offset)
        view = memoryview(out.reshape(-1)).cast("B")
        got = self._file.readinto(view)
        if got != len(view):
            raise CheckpointError(f"{self.path}: short read ({got} of {len(view)} bytes): truncated")
        return out

    def read(self, name: str) -> np.ndarray:
        dtype, shape, start = self._info(name)
        return self._read_into(np.empty(shape, dtype), start)

    def read_rows(self, name: str, lo: int, hi: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows [lo, hi) along dim 0 (one contiguous byte range), into `out` (contiguous) when given."""
        dtype, shape, start = self._info(name)
        row = _numel(shape[1:]) * dtype.itemsize
        out = np.empty((hi - lo,) + shape[1:], dtype) if out is None else out
        return self._read_into(out, start + lo * row)

    def read_flat(self, name: str, lo: int, hi: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        dtype, shape, start = self._info(name)
        out = np.empty(hi - lo, dtype) if out is None else out
        return self._read_into(out, start + lo * dtype.itemsize)


def _offsets(entry) -> tuple[int, int]:
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
        return (-1, -1)
    return offsets[0], offsets[1]


def _is_shape(shape) -> bool:
    return isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)


def with_path(exc: OSError, path) -> OSError:
    """The same error, naming `path` when it names none."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return type(exc)(exc.errno, exc.strerror, str(path))


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()
