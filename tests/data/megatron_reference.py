"""An independent, minimal writer and reader of Megatron's MMapIndexedDataset bytes, written from the format spec
(shared/reference/interop-formats.md section 1) with struct + numpy only, to test gpt3d's implementation against."""
from __future__ import annotations

import struct

import numpy as np

CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}


def reference_write(prefix: str, documents: list[list[list[int]]], dtype, modes: bool = False) -> None:
    """documents: each a list of sequences (sentences) of token ids."""
    code = {np.dtype(v): k for k, v in CODES.items()}[np.dtype(dtype)]
    sequences = [seq for doc in documents for seq in doc]
    lengths = [len(s) for s in sequences]
    pointers, position = [], 0
    for n in lengths:
        pointers.append(position)
        position += n * np.dtype(dtype).itemsize
    doc_index = [0]
    for doc in documents:
        doc_index.append(doc_index[-1] + len(doc))
    with open(prefix + ".bin", "wb") as f:
        for s in sequences:
            f.write(np.array(s, dtype=dtype).tobytes())
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", code))
        f.write(struct.pack("<Q", len(sequences)))
        f.write(struct.pack("<Q", len(doc_index)))
        f.write(struct.pack(f"<{len(lengths)}i", *lengths))
        f.write(struct.pack(f"<{len(pointers)}q", *pointers))
        f.write(struct.pack(f"<{len(doc_index)}q", *doc_index))
        if modes:
            f.write(bytes(len(sequences)))


def reference_read(prefix: str) -> tuple[np.dtype, list[list[int]], list[int]]:
    """(dtype, sequences, document index), asserting the header as Megatron's reader does."""
    with open(prefix + ".idx", "rb") as f:
        data = f.read()
    assert data[:9] == b"MMIDIDX\x00\x00"
    (version,) = struct.unpack_from("<Q", data, 9)
    assert version == 1
    (code,) = struct.unpack_from("<B", data, 17)
    count, doc_count = struct.unpack_from("<QQ", data, 18)
    offset = 34
    lengths = struct.unpack_from(f"<{count}i", data, offset)
    offset += 4 * count
    pointers = struct.unpack_from(f"<{count}q", data, offset)
    offset += 8 * count
    doc_index = list(struct.unpack_from(f"<{doc_count}q", data, offset))
    offset += 8 * doc_count
    assert offset == len(data), "no modes expected for text"
    assert doc_index[-1] == count
    dtype = np.dtype(CODES[code])
    with open(prefix + ".bin", "rb") as f:
        blob = f.read()
    sequences = [np.frombuffer(blob, dtype, n, p).tolist() for n, p in zip(lengths, pointers)]
    return dtype, sequences, doc_index
