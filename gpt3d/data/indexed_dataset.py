"""Megatron-LM's memory-mapped indexed dataset (PREFIX.bin + PREFIX.idx): a streaming, atomic writer and a validating reader.

The layout is byte-for-byte Megatron's MMapIndexedDataset (megatron/core/datasets/indexed_dataset.py), so data
preprocessed by Megatron-LM loads here unchanged and ours loads there. `.idx`, little-endian:

    offset 0   9 bytes  b"MMIDIDX\\x00\\x00"
           9   u64      version = 1
          17   u8       dtype code (DTYPE_CODES)
          18   u64      S = number of sequences
          26   u64      D = length of the document index (= documents + 1)
          34   i32[S]   sequence lengths in tokens
               i64[S]   byte offsets of each sequence in .bin
               i64[D]   document index: 0, then the running sequence count after each document
               i8[S]    modes (multimodal files only; never written for text, accepted when reading)

`.bin` holds the token arrays back to back with no header. gpt3d writes one sequence per document.
"""
from __future__ import annotations

import os
import struct
from types import TracebackType
from typing import Iterable, Optional, Union

import numpy as np

from .errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_BYTES = len(MAGIC) + 8 + 1 + 8 + 8  # 34
# Megatron-core's codes; the pre-core reader used the same ones except that 7 also meant float64.
DTYPE_CODES: dict[int, type] = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
                                7: np.float32, 8: np.uint16}
_CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
REBUILD_HINT = "rebuild it with `gpt3d preprocess`"

PathLike = Union[str, os.PathLike]


def token_dtype(vocab_size: int) -> np.dtype:
    """Megatron's rule: uint16 when every id fits with margin (vocab < 65500), else int32."""
    if vocab_size <= 0:
        raise DataError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def data_file_path(prefix: PathLike) -> str:
    return f"{os.fspath(prefix)}.bin"


def index_file_path(prefix: PathLike) -> str:
    return f"{os.fspath(prefix)}.idx"


def dataset_exists(prefix: PathLike) -> bool:
    """True when both PREFIX.bin and PREFIX.idx exist (not whether they are valid)."""
    return os.path.isfile(data_file_path(prefix)) and os.path.isfile(index_file_path(prefix))


class IndexedDataset:
    """Read-only, memory-mapped view of PREFIX.bin/PREFIX.idx; `ds[i]` is sequence i as a numpy array (no copy).

    Every structural problem (missing/empty file, bad magic, wrong version, unknown dtype, truncated index,
    inconsistent pointers, .bin size not matching the index) raises one DataError naming the file, before any use.
    """

    def __init__(self, prefix: PathLike):
        self.prefix = os.fspath(prefix)
        self.index_path = index_file_path(prefix)
        self.data_path = data_file_path(prefix)
        for path in (self.index_path, self.data_path):
            if not os.path.isfile(path):
                raise DataError(f"{path}: no such file; an indexed dataset needs both PREFIX.bin and PREFIX.idx "
                                f"(data.datasets[].prefix is the path without the extension); {REBUILD_HINT}")
        self._read_index()
        self._open_data()

    def _fail(self, path: str, problem: str) -> DataError:
        return DataError(f"{path}: {problem}; {REBUILD_HINT}")

    def _read_index(self) -> None:
        path = self.index_path
        size = os.path.getsize(path)
        if size == 0:
            raise self._fail(path, "empty file, not a Megatron indexed dataset index")
        with open(path, "rb") as f:
            header = f.read(HEADER_BYTES)
        if len(header) < len(MAGIC) and MAGIC.startswith(header):
            raise self._fail(path, f"truncated index: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
        if header[:len(MAGIC)] != MAGIC:
            raise self._fail(path, f"not a Megatron indexed dataset (bad magic {header[:len(MAGIC)]!r}, "
                                   f"expected {MAGIC!r})")
        if len(header) < HEADER_BYTES:
            raise self._fail(path, f"truncated index: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
        version, code, num_sequences, num_doc_entries = struct.unpack("<QBQQ", header[len(MAGIC):])
        if version != VERSION:
            raise self._fail(path, f"unsupported index version {version} (expected {VERSION})")
        if code not in DTYPE_CODES:
            raise self._fail(path, f"unknown dtype code {code} (known: "
                                   f"{', '.join(f'{k}={np.dtype(v).name}' for k, v in DTYPE_CODES.items())})")
        expected = HEADER_BYTES + num_sequences * (4 + 8) + num_doc_entries * 8
        if size < expected:
            raise self._fail(path, f"truncated index: {size} bytes, but its header ({num_sequences} sequences, "
                                   f"{num_doc_entries} document-index entries) needs {expected}")
        if size not in (expected, expected + num_sequences):  # the optional trailing i8 modes
            raise self._fail(path, f"index is {size} bytes, but its header ({num_sequences} sequences, "
                                   f"{num_doc_entries} document-index entries) needs {expected} "
                                   f"(or {expected + num_sequences} with modes)")
        self.dtype = np.dtype(DTYPE_CODES[code])
        self._index_buffer = np.memmap(path, mode="r", dtype=np.uint8)
        offset = HEADER_BYTES
        self.sequence_lengths = np.frombuffer(self._index_buffer, np.int32, num_sequences, offset)
        offset += num_sequences * 4
        self.sequence_pointers = np.frombuffer(self._index_buffer, np.int64, num_sequences, offset)
        offset += num_sequences * 8
        self.document_indices = np.frombuffer(self._index_buffer, np.int64, num_doc_entries, offset)
        offset += num_doc_entries * 8
        self.sequence_modes = (np.frombuffer(self._index_buffer, np.int8, num_sequences, offset)
                               if size > expected else None)
        self._check_index_consistency()

    def _check_index_consistency(self) -> None:
        path = self.index_path
        lengths, pointers, docs = self.sequence_lengths, self.sequence_pointers, self.document_indices
        if len(docs) == 0 or docs[0] != 0 or docs[-1] != len(lengths):
            raise self._fail(path, f"corrupt document index (must start at 0 and end at the sequence count "
                                   f"{len(lengths)}, got {docs[:1].tolist()}...{docs[-1:].tolist()})")
        if len(docs) > 1 and np.any(np.diff(docs) < 0):
            raise self._fail(path, "corrupt document index (not non-decreasing)")
        if len(lengths) and lengths.min() < 0:
            raise self._fail(path, f"corrupt index: negative sequence length at {int(np.argmin(lengths))}")
        expected_pointers = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=expected_pointers[1:])
        if not np.array_equal(pointers, expected_pointers):
            bad = int(np.argmax(pointers != expected_pointers))
            raise self._fail(path, f"corrupt index: byte offset of sequence {bad} is {int(pointers[bad])}, but the "
                                   f"lengths before it give {int(expected_pointers[bad])}")
        self.num_tokens = int(lengths.astype(np.int64).sum())

    def _open_data(self) -> None:
        expected = self.num_tokens * self.dtype.itemsize
        actual = os.path.getsize(self.data_path)
        if actual != expected:
            what = "empty file" if actual == 0 else f"{actual} bytes"
            raise self._fail(self.data_path, f"{what}, but {self.index_path} describes {self.num_tokens} tokens of "
                                             f"{self.dtype.name} = {expected} bytes (truncated .bin, or .bin and .idx "
                                             f"from different runs)")
        # np.memmap refuses zero-length files; an empty dataset simply has no tokens.
        self.tokens = (np.memmap(self.data_path, mode="r", dtype=self.dtype) if expected
                       else np.zeros(0, dtype=self.dtype))

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {self.prefix} ({len(self)} sequences)")
        return self.get(int(i) % len(self))

    def get(self, i: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        """Tokens [offset, offset+length) of sequence i (to its end when length is None); a view into the mmap."""
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize + offset
        end = start - offset + int(self.sequence_lengths[i]) if length is None else start + length
        return self.tokens[start:end]

    def max_token_id(self, full_scan_limit_bytes: int = 1 << 30, sample_chunks: int = 256,
                     chunk_tokens: int = 1 << 18) -> int:
        """The largest token id: exact for a .bin up to `full_scan_limit_bytes`, else the max over evenly spaced chunks
        (a cheap check that catches a dataset tokenised with a larger vocabulary)."""
        n = len(self.tokens)
        if n == 0:
            return -1
        if n * self.dtype.itemsize <= full_scan_limit_bytes:
            return int(self.tokens.max())
        starts = np.linspace(0, n - chunk_tokens, sample_chunks).astype(np.int64)
        return int(max(self.tokens[s:s + chunk_tokens].max() for s in starts))


class IndexedDatasetWriter:
    """Streams documents into PREFIX.bin/PREFIX.idx with constant memory, atomically.

    Tokens go straight to a temporary .bin and per-document lengths to a temporary spool file; `finalize()` writes the
    .idx from the spool and renames both into place, the .idx last (its rename commits the dataset). Any old dataset under
    the name loses its .idx first, so a crash at any moment leaves either the complete old dataset, the complete new one,
    or a prefix without .idx that every reader rejects; never a half-written file under the final name. Use as a context
    manager: an exception inside discards the temporary files.
    """

    def __init__(self, prefix: PathLike, vocab_size: Optional[int] = None, dtype: Optional[np.dtype] = None):
        if (vocab_size is None) == (dtype is None):
            raise DataError("IndexedDatasetWriter: pass exactly one of vocab_size (Megatron's dtype rule) or dtype")
        self.dtype = token_dtype(vocab_size) if vocab_size is not None else np.dtype(dtype)
        if self.dtype not in _CODE_OF_DTYPE:
            raise DataError(f"IndexedDatasetWriter: dtype {self.dtype} has no Megatron code")
        self.prefix = os.fspath(prefix)
        self._max_id = np.iinfo(self.dtype).max if self.dtype.kind in "iu" else None
        directory = os.path.dirname(os.path.abspath(self.prefix))
        if not os.path.isdir(directory):
            raise DataError(f"{self.prefix}: output directory {directory} does not exist; create it first")
        suffix = f".tmp-{os.getpid()}"
        self._tmp_bin = data_file_path(self.prefix) + suffix
        self._tmp_idx = index_file_path(self.prefix) + suffix
        self._tmp_lengths = index_file_path(self.prefix) + ".lengths" + suffix
        self._bin = open(self._tmp_bin, "wb")
        self._lengths = open(self._tmp_lengths, "wb")
        self._open_document_tokens = 0
        self.num_documents = 0
        self.num_tokens = 0
        self._closed = False

    def add_tokens(self, tokens: Union[np.ndarray, Iterable[int]]) -> None:
        """Append tokens to the current (open) document; call `end_document()` when it is complete."""
        if self._closed:
            raise DataError(f"{self.prefix}: writer already finalized or aborted")
        array = np.asarray(tokens)
        if array.size == 0:
            return
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise DataError(f"{self.prefix}: tokens must be a 1-D sequence of integers, got {array.dtype} "
                            f"shape {array.shape}")
        if self._max_id is not None and (array.min() < 0 or array.max() > self._max_id):
            raise DataError(f"{self.prefix}: token id {int(array.max())} (or {int(array.min())}) does not fit "
                            f"{self.dtype.name}; write with a vocab_size covering the tokenizer")
        self._bin.write(array.astype(self.dtype, copy=False).tobytes())
        self._open_document_tokens += array.size

    def end_document(self) -> None:
        """Close the current document as one sequence (an empty document is skipped)."""
        if self._open_document_tokens == 0:
            return
        if self._open_document_tokens > np.iinfo(np.int32).max:
            raise DataError(f"{self.prefix}: a document of {self._open_document_tokens} tokens exceeds the format's "
                            f"int32 sequence length; split it")
        self._lengths.write(struct.pack("<i", self._open_document_tokens))
        self.num_tokens += self._open_document_tokens
        self.num_documents += 1
        self._open_document_tokens = 0

    def add_document(self, tokens: Union[np.ndarray, Iterable[int]]) -> None:
        self.add_tokens(tokens)
        self.end_document()

    def finalize(self) -> None:
        if self._open_document_tokens:
            self.end_document()
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        self._lengths.close()
        self._write_index()
        final_bin, final_idx = data_file_path(self.prefix), index_file_path(self.prefix)
        if os.path.exists(final_idx):
            os.remove(final_idx)  # the old dataset is now invalid as a whole, never mixed with the new one
        os.replace(self._tmp_bin, final_bin)
        os.replace(self._tmp_idx, final_idx)
        os.remove(self._tmp_lengths)
        self._closed = True

    def _write_index(self, chunk: int = 1 << 20) -> None:
        count = self.num_documents
        itemsize = self.dtype.itemsize
        with open(self._tmp_idx, "wb") as out:
            out.write(MAGIC)
            out.write(struct.pack("<QBQQ", VERSION, _CODE_OF_DTYPE[self.dtype], count, count + 1))
            # Three streaming passes over the spool keep memory constant: lengths, byte pointers, document index.
            with open(self._tmp_lengths, "rb") as spool:
                while block := spool.read(chunk * 4):
                    out.write(block)
            with open(self._tmp_lengths, "rb") as spool:
                position = 0
                while block := spool.read(chunk * 4):
                    lengths = np.frombuffer(block, dtype="<i4").astype(np.int64) * itemsize
                    pointers = np.cumsum(lengths) - lengths + position
                    position += int(lengths.sum())
                    out.write(pointers.astype("<i8").tobytes())
            for start in range(0, count + 1, chunk):
                out.write(np.arange(start, min(start + chunk, count + 1), dtype="<i8").tobytes())
            out.flush()
            os.fsync(out.fileno())

    def abort(self) -> None:
        """Discard everything written so far; the final names are untouched."""
        self._closed = True
        for handle in (self._bin, self._lengths):
            handle.close()
        for path in (self._tmp_bin, self._tmp_idx, self._tmp_lengths):
            if os.path.exists(path):
                os.remove(path)

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


def write_indexed_dataset(prefix: PathLike, documents: Iterable[Iterable[int]], vocab_size: int) -> None:
    """Write every document (a sequence of token ids) as one sequence of PREFIX.bin/.idx."""
    with IndexedDatasetWriter(prefix, vocab_size=vocab_size) as writer:
        for document in documents:
            writer.add_document(document)


def remove_dataset(prefix: PathLike) -> None:
    """Delete PREFIX.idx then PREFIX.bin (idx first: a half-removed dataset is never readable)."""
    for path in (index_file_path(prefix), data_file_path(prefix)):
        if os.path.exists(path):
            os.remove(path)


__all__ = ["IndexedDataset", "IndexedDatasetWriter", "write_indexed_dataset", "token_dtype", "dataset_exists",
           "remove_dataset", "data_file_path", "index_file_path", "DTYPE_CODES", "MAGIC"]
