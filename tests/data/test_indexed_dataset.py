"""Megatron indexed dataset: byte-exact interop with an independent writer/reader, every corrupt-file error, atomicity."""
from __future__ import annotations

import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from gpt3d.data.errors import DataError
from gpt3d.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter, token_dtype, write_indexed_dataset

from .megatron_reference import reference_read, reference_write

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def random_documents(seed: int, count: int, high: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, high, size=int(rng.integers(1, 50))).tolist() for _ in range(count)]


def test_megatron_dtype_rule():
    assert token_dtype(50257) == np.uint16
    assert token_dtype(65499) == np.uint16
    assert token_dtype(65500) == np.int32
    assert token_dtype(200_000) == np.int32


@pytest.mark.parametrize("vocab_size", [512, 70_000])
def test_our_files_equal_reference_bytes(tmp_path, vocab_size):
    docs = random_documents(0, 40, vocab_size)
    ours, ref = str(tmp_path / "ours"), str(tmp_path / "ref")
    write_indexed_dataset(ours, docs, vocab_size=vocab_size)
    reference_write(ref, [[d] for d in docs], token_dtype(vocab_size))
    for ext in (".bin", ".idx"):
        assert open(ours + ext, "rb").read() == open(ref + ext, "rb").read()
    dtype, sequences, doc_index = reference_read(ours)
    assert dtype == token_dtype(vocab_size)
    assert sequences == docs
    assert doc_index == list(range(len(docs) + 1))


def test_reader_reads_reference_files_with_sentences_and_modes(tmp_path):
    # Megatron data preprocessed with sentence splitting (several sequences per document) and a multimodal tail.
    documents = [[[1, 2, 3], [4, 5]], [[6]], [[7, 8, 9, 10], [11], [12, 13]]]
    for modes in (False, True):
        prefix = str(tmp_path / f"ref{modes}")
        reference_write(prefix, documents, np.int32, modes=modes)
        ds = IndexedDataset(prefix)
        assert ds.dtype == np.int32 and len(ds) == 6 and ds.num_documents == 3
        assert [ds[i].tolist() for i in range(len(ds))] == [s for d in documents for s in d]
        assert ds.document_indices.tolist() == [0, 2, 3, 6]
        assert ds.get(3, 1, 2).tolist() == [8, 9]
        assert ds[-1].tolist() == [12, 13]
        assert ds.max_token_id() == 13
        assert (ds.sequence_modes is not None) == modes


def test_streamed_pieces_equal_whole_documents(tmp_path):
    docs = random_documents(1, 10, 1000)
    whole, pieces = str(tmp_path / "whole"), str(tmp_path / "pieces")
    write_indexed_dataset(whole, docs, vocab_size=1000)
    with IndexedDatasetWriter(pieces, vocab_size=1000) as writer:
        for doc in docs:
            for start in range(0, len(doc), 7):
                writer.add_tokens(doc[start:start + 7])
            writer.end_document()
    for ext in (".bin", ".idx"):
        assert open(whole + ext, "rb").read() == open(pieces + ext, "rb").read()
    assert sorted(os.listdir(tmp_path)) == ["pieces.bin", "pieces.idx", "whole.bin", "whole.idx"]


def test_empty_dataset_round_trips(tmp_path):
    prefix = str(tmp_path / "empty")
    write_indexed_dataset(prefix, [], vocab_size=100)
    ds = IndexedDataset(prefix)
    assert len(ds) == 0 and ds.num_tokens == 0 and ds.max_token_id() == -1
    assert reference_read(prefix)[1:] == ([], [0])


def test_token_that_does_not_fit_is_rejected(tmp_path):
    with pytest.raises(DataError, match="token id 70000 .* does not fit uint16"):
        with IndexedDatasetWriter(str(tmp_path / "x"), vocab_size=512) as writer:
            writer.add_document([1, 70000])
    assert os.listdir(tmp_path) == []


def test_failure_inside_writer_keeps_old_dataset(tmp_path):
    prefix = str(tmp_path / "d")
    write_indexed_dataset(prefix, [[1, 2, 3]], vocab_size=10)
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(prefix, vocab_size=10) as writer:
            writer.add_document([4, 5])
            raise RuntimeError("boom")
    assert IndexedDataset(prefix)[0].tolist() == [1, 2, 3]
    assert sorted(os.listdir(tmp_path)) == ["d.bin", "d.idx"]


def test_crash_before_finalize_leaves_nothing_under_final_name(tmp_path):
    prefix = str(tmp_path / "crash")
    code = ("import os, sys; from gpt3d.data.indexed_dataset import IndexedDatasetWriter\n"
            "w = IndexedDatasetWriter(sys.argv[1], vocab_size=100)\n"
            "w.add_document([1, 2, 3]); w._bin.flush(); os._exit(3)\n")
    result = subprocess.run([sys.executable, "-c", code, prefix], cwd=REPO, capture_output=True)
    assert result.returncode == 3, result.stderr.decode()
    assert not os.path.exists(prefix + ".bin") and not os.path.exists(prefix + ".idx")
    assert all(".tmp-" in name for name in os.listdir(tmp_path))


def _corrupt_cases():
    def rewrite_idx(offset: int, data: bytes):
        def apply(prefix: str) -> None:
            with open(prefix + ".idx", "r+b") as f:
                f.seek(offset)
                f.write(data)
        return apply

    def truncate(ext: str, size: int):
        def apply(prefix: str) -> None:
            path = prefix + ext
            with open(path, "r+b") as f:
                f.truncate(size if size >= 0 else os.path.getsize(path) + size)
        return apply

    def remove(ext: str):
        return lambda prefix: os.remove(prefix + ext)

    # 3 sequences of uint16: S=3, D=4 -> idx = 34 + 3*4 + 3*8 + 4*8 = 102 bytes; pointers at 46, doc index at 70.
    return {
        "missing idx": (remove(".idx"), ".idx", "no such file"),
        "missing bin": (remove(".bin"), ".bin", "no such file"),
        "empty idx": (truncate(".idx", 0), ".idx", "empty file, not a Megatron indexed dataset index"),
        "bad magic": (rewrite_idx(0, b"NOTMAGIC!"), ".idx",
                      "not a Megatron indexed dataset (bad magic b'NOTMAGIC!', expected b'MMIDIDX\\x00\\x00')"),
        "wrong version": (rewrite_idx(9, struct.pack("<Q", 2)), ".idx", "unsupported index version 2 (expected 1)"),
        "unknown dtype": (rewrite_idx(17, bytes([9])), ".idx", "unknown dtype code 9"),
        "truncated header": (truncate(".idx", 20), ".idx", "truncated index: 20 bytes, shorter than the 34-byte header"),
        "truncated idx": (truncate(".idx", -8), ".idx",
                          "truncated index: 94 bytes, but its header (3 sequences, 4 document-index entries) needs 102"),
        "bad pointer": (rewrite_idx(46 + 8, struct.pack("<q", 7)), ".idx",
                        "corrupt index: byte offset of sequence 1 is 7, but the lengths before it give 4"),
        "bad document index": (rewrite_idx(70 + 24, struct.pack("<q", 2)), ".idx", "corrupt document index"),
        "truncated bin": (truncate(".bin", -2), ".bin",
                          "10 bytes, but {prefix}.idx describes 6 tokens of uint16 = 12 bytes"),
        "empty bin": (truncate(".bin", 0), ".bin", "empty file, but {prefix}.idx describes 6 tokens"),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases()))
def test_reader_rejects_corrupt_files(tmp_path, case):
    corrupt, ext, message = _corrupt_cases()[case]
    prefix = str(tmp_path / "data")
    reference_write(prefix, [[[1, 2]], [[3]], [[4, 5, 6]]], np.uint16)
    IndexedDataset(prefix)  # valid before corruption
    corrupt(prefix)
    with pytest.raises(DataError) as info:
        IndexedDataset(prefix)
    text = str(info.value)
    assert text.startswith(f"{prefix}{ext}: "), text
    assert message.format(prefix=prefix) in text, text
    assert "gpt3d preprocess" in text


def test_megatron_core_reads_our_files(tmp_path):
    from megatron.core.datasets import indexed_dataset  # installed by launchers/setup_env.sh --test
    docs = random_documents(2, 20, 512)
    prefix = str(tmp_path / "ours")
    write_indexed_dataset(prefix, docs, vocab_size=512)
    theirs = indexed_dataset.IndexedDataset(prefix)
    assert len(theirs) == len(docs)
    assert [theirs[i].tolist() for i in range(len(docs))] == docs
    assert theirs.document_indices.tolist() == list(range(len(docs) + 1))
    reference_write(str(tmp_path / "ref"), [[d] for d in docs], np.uint16)
    # Keep megatron's dataset alive while reading: its __del__ unmaps the buffer its arrays point into.
    ours_ref, theirs_ref = IndexedDataset(str(tmp_path / "ref")), indexed_dataset.IndexedDataset(str(tmp_path / "ref"))
    assert [ours_ref[i].tolist() for i in range(len(docs))] == [theirs_ref[i].tolist() for i in range(len(docs))]
