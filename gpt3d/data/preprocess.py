"""`gpt3d preprocess`: tokenise text or JSONL files into a Megatron indexed dataset (PREFIX.bin + PREFIX.idx).

    gpt3d preprocess --input a.jsonl b.txt --output-prefix data/web (--tokenizer DIR | --train-tokenizer 32000)
                     [--json-key text] [--split-docs-on-blank-lines] [--workers N] [--overwrite]

Documents: a `.jsonl`/`.json`/`.ndjson` file has one `{"text": ...}` object per line; any other file is plain text, one
document per file, or one per paragraph with --split-docs-on-blank-lines. `<|endoftext|>` is appended after every
document (GPT-2 / Megatron `--append-eod`). Input is read line by line and written as it goes, so files larger than memory
work. Everything is checked before work starts (inputs exist and are non-empty, the output does not exist unless
--overwrite, the tokenizer loads); a bad line found later (invalid JSON, missing key, invalid UTF-8) stops with
`file:line` and leaves no output behind. With --train-tokenizer the BPE is first trained on the same documents and saved
to PREFIX-tokenizer/ (GPT-2 vocab.json + merges.txt) — pass that directory as data.tokenizer_dir.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
from tqdm import tqdm

from .documents import DocumentReader, Piece, check_input_file
from .errors import DataError
from .indexed_dataset import IndexedDatasetWriter, data_file_path, dataset_exists, index_file_path
from .tokenizer import Tokenizer, load_tokenizer, train_tokenizer

BATCH_CHARS = 16 << 20  # text handed to the encoder at once: bounds memory, keeps workers busy
BATCH_PIECES = 4096


@dataclass
class PreprocessStats:
    documents: int
    tokens: int
    input_bytes: int
    seconds: float
    skipped_empty: int

    @property
    def megabytes_per_second(self) -> float:
        return self.input_bytes / 1e6 / max(self.seconds, 1e-9)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `gpt3d preprocess` options (the CLI calls this, then `run`)."""
    parser.add_argument("--input", nargs="+", required=True, metavar="FILE",
                        help="text files (one document each, or per paragraph with --split-docs-on-blank-lines) and/or "
                             "JSONL files (.jsonl/.json/.ndjson, one {\"text\": ...} object per line)")
    parser.add_argument("--output-prefix", required=True, metavar="PREFIX", help="writes PREFIX.bin and PREFIX.idx")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokenizer", metavar="DIR", help="directory with GPT-2-format vocab.json + merges.txt")
    source.add_argument("--train-tokenizer", type=int, metavar="VOCAB_SIZE",
                        help="train a byte-level BPE of this size on the input first; saved to PREFIX-tokenizer/")
    parser.add_argument("--json-key", default="text", help="JSONL field holding the text (default: text)")
    parser.add_argument("--format", default="auto", choices=["auto", "text", "jsonl"],
                        help="input format; auto: .jsonl/.json/.ndjson are JSONL, anything else plain text")
    parser.add_argument("--split-docs-on-blank-lines", action="store_true",
                        help="plain text: blank lines separate documents (default: one document per file)")
    parser.add_argument("--workers", type=int, default=1, help="encoding processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing PREFIX.bin/.idx")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def tokenizer_output_dir(output_prefix: str) -> str:
    return f"{output_prefix}-tokenizer"


def run(args: argparse.Namespace) -> int:
    """Run `gpt3d preprocess`; returns the exit code (errors print one line to stderr and return 2)."""
    try:
        stats = _run(args)
    except DataError as exc:
        print(f"gpt3d preprocess: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only output: the writers have removed their partial files
        from gpt3d.oserror import os_error_line
        if exc.filename is None and exc.errno is not None:  # a bare write error: name what was being written
            exc = OSError(exc.errno, exc.strerror, f"{args.output_prefix}.bin/.idx")
        print(f"gpt3d preprocess: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    print(f"gpt3d preprocess: wrote {args.output_prefix}.bin/.idx: {stats.documents} documents, {stats.tokens} tokens "
          f"from {stats.input_bytes / 1e6:.1f} MB in {stats.seconds:.1f} s ({stats.megabytes_per_second:.1f} MB/s)"
          + (f"; skipped {stats.skipped_empty} empty documents" if stats.skipped_empty else ""))
    return 0


def _run(args: argparse.Namespace) -> PreprocessStats:
    options = dict(json_key=args.json_key, fmt=args.format, split_on_blank_lines=args.split_docs_on_blank_lines)
    check_arguments(args.input, args.output_prefix, args.overwrite, args.workers)
    if args.train_tokenizer is not None:
        out_dir = tokenizer_output_dir(args.output_prefix)
        if os.path.exists(out_dir) and not args.overwrite:
            raise DataError(f"{out_dir}: tokenizer directory already exists; pass --overwrite or use --tokenizer "
                            f"{out_dir}")
        if args.train_tokenizer < 257:
            raise DataError(f"--train-tokenizer: vocabulary size must be >= 257 (256 bytes + <|endoftext|>), "
                            f"got {args.train_tokenizer}")
        tokenizer = _train_on_inputs(args.input, args.train_tokenizer, out_dir, options)
        print(f"gpt3d preprocess: trained a {tokenizer.vocab_size}-token BPE, saved to {out_dir}", file=sys.stderr)
    else:
        tokenizer = load_tokenizer(args.tokenizer)
    return preprocess(args.input, args.output_prefix, tokenizer, workers=args.workers, overwrite=args.overwrite,
                      progress=not args.no_progress, **options)


def check_arguments(inputs: Sequence[str], output_prefix: str, overwrite: bool, workers: int) -> None:
    if not inputs:
        raise DataError("--input: no input files")
    for path in inputs:
        check_input_file(path)
    if dataset_exists(output_prefix) or os.path.exists(index_file_path(output_prefix)) \
            or os.path.exists(data_file_path(output_prefix)):
        if not overwrite:
            raise DataError(f"{output_prefix}: output already exists ({output_prefix}.bin/.idx); pass --overwrite to "
                            f"replace it or choose another --output-prefix")
    directory = os.path.dirname(os.path.abspath(output_prefix))
    if not os.path.isdir(directory):
        raise DataError(f"--output-prefix {output_prefix}: directory {directory} does not exist; create it first")
    if workers < 1:
        raise DataError(f"--workers: must be >= 1, got {workers}")


def _train_on_inputs(inputs: Sequence[str], vocab_size: int, out_dir: str, options: dict) -> Tokenizer:
    def texts() -> Iterator[str]:
        for path in inputs:
            for piece in DocumentReader(path, **options):
                yield piece.text
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        train_tokenizer(texts(), vocab_size, tmp)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(out_dir)


def preprocess(inputs: Sequence[str], output_prefix: str, tokenizer: Tokenizer, *, json_key: str = "text",
               fmt: str = "auto", split_on_blank_lines: bool = False, workers: int = 1, overwrite: bool = False,
               progress: bool = True) -> PreprocessStats:
    """Tokenise `inputs` into output_prefix.bin/.idx (see the module docstring); raises DataError on bad input."""
    check_arguments(inputs, output_prefix, overwrite, workers)
    total_bytes = sum(os.path.getsize(p) for p in inputs)
    start = time.perf_counter()
    documents = tokens = skipped = 0
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000, desc="preprocess",
               disable=not progress, dynamic_ncols=True)
    pool = _encoder_pool(tokenizer, workers)
    try:
        with IndexedDatasetWriter(output_prefix, vocab_size=tokenizer.vocab_size) as writer:
            document_tokens = 0
            for path in inputs:
                reader = DocumentReader(path, fmt=fmt, json_key=json_key, split_on_blank_lines=split_on_blank_lines)
                reported = 0
                for batch in _batches(iter(reader)):
                    for piece, ids in zip(batch, _encode(tokenizer, pool, workers, [p.text for p in batch])):
                        writer.add_tokens(np.asarray(ids, dtype=np.int64))
                        document_tokens += len(ids)
                        if piece.ends_document:
                            if document_tokens == 0:
                                skipped += 1
                                continue
                            writer.add_document([tokenizer.eod_id])
                            documents += 1
                            tokens += document_tokens + 1
                            document_tokens = 0
                    bar.update(reader.bytes_read - reported)
                    reported = reader.bytes_read
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return PreprocessStats(documents, tokens, total_bytes, time.perf_counter() - start, skipped)


def _batches(pieces: Iterator[Piece]) -> Iterator[list[Piece]]:
    batch: list[Piece] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece.text)
        if size >= BATCH_CHARS or len(batch) >= BATCH_PIECES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# Worker processes load the tokenizer once from its directory (spawned: `tokenizers` must not be forked after use).
_WORKER_TOKENIZER: Optional[Tokenizer] = None


def _init_worker(directory: str) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # parallelism comes from the processes; avoid oversubscription
    _WORKER_TOKENIZER = load_tokenizer(directory)


def _encode_in_worker(texts: list[str]) -> list[list[int]]:
    assert _WORKER_TOKENIZER is not None
    return _WORKER_TOKENIZER.encode_batch(texts)


def _encoder_pool(tokenizer: Tokenizer, workers: int):
    if workers == 1:
        return None
    context = multiprocessing.get_context("spawn")
    return context.Pool(workers, initializer=_init_worker, initargs=(tokenizer.directory,))


def _encode(tokenizer: Tokenizer, pool, workers: int, texts: list[str]) -> list[list[int]]:
    if pool is None:
        return tokenizer.encode_batch(texts)
    per_worker = max(1, -(-len(texts) // (workers * 4)))
    chunks = [texts[i:i + per_worker] for i in range(0, len(texts), per_worker)]
    return [ids for chunk in pool.map(_encode_in_worker, chunks) for ids in chunk]


__all__ = ["add_arguments", "run", "preprocess", "PreprocessStats", "tokenizer_output_dir"]
