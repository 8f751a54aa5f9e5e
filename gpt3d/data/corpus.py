"""The offline default corpus: the docstrings and comments of the Python standard library, BPE-trained and tokenised.

Every Python install carries this text, so training works with no download. `build_default_corpus` walks
`sysconfig.get_paths()['stdlib']` in sorted order (skipping test directories, site-packages and __pycache__), turns each
module into one document (its docstrings and full-line comments in source order), trains a byte-level BPE on them and
writes an indexed dataset. The result is cached under CACHE_DIR/default-corpus/py<major>.<minor>-vocab<V>-v<format>/;
several processes (e.g. every rank of a job) may call it at once: one builds under an fcntl lock in a temporary directory
renamed into place when complete, the others wait and reuse it. manifest.json there records the size in documents,
characters and tokens.
"""
from __future__ import annotations

import ast
import fcntl
import glob
import json
import os
import shutil
import sys
import sysconfig
import time
import tokenize
from typing import Iterator, Optional

import numpy as np

from .errors import DataError
from .indexed_dataset import IndexedDatasetWriter
from .tokenizer import train_tokenizer

CORPUS_FORMAT = 1  # bump when the extraction changes, so old caches are not reused
MAX_CORPUS_CHARS = 24_000_000  # cap; CPython 3.11's stdlib gives ~3 M characters, far below it
SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
DATASET_NAME = "corpus"
TOKENIZER_NAME = "tokenizer"
MANIFEST_NAME = "manifest.json"


def default_cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "gpt3d")


def stdlib_python_files(root: Optional[str] = None) -> list[str]:
    """The standard library's .py files in a deterministic (sorted, depth-first) order."""
    root = root or sysconfig.get_paths()["stdlib"]
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS)
        files.extend(os.path.join(directory, n) for n in sorted(names) if n.endswith(".py"))
    return files


def module_text(source: str) -> str:
    """Docstrings and full-line comments of one module, in source order, as paragraphs."""
    blocks: list[tuple[int, str]] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and doc.strip():
                blocks.append((node.body[0].lineno, doc.strip()))
    comment: list[str] = []
    comment_start = 0
    for number, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        is_comment = stripped.startswith("#") and not stripped.startswith(("#!", "# -*-")) and stripped != "#"
        if is_comment:
            if not comment:
                comment_start = number
            comment.append(stripped.lstrip("#").strip())
        elif comment:
            blocks.append((comment_start, " ".join(comment)))
            comment = []
    if comment:
        blocks.append((comment_start, " ".join(comment)))
    blocks.sort(key=lambda block: block[0])
    return "\n\n".join(text for _, text in blocks)


def stdlib_documents(max_chars: int = MAX_CORPUS_CHARS) -> Iterator[str]:
    """One document per standard-library module, until `max_chars` characters."""
    total = 0
    for path in stdlib_python_files():
        try:
            with tokenize.open(path) as f:  # honours PEP 263 coding declarations
                text = module_text(f.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few files are deliberately invalid (e.g. lib2to3 fixtures); skipping is deterministic
        if not text:
            continue
        if total + len(text) > max_chars:
            return
        total += len(text)
        yield text


def corpus_key(vocab_size: int) -> str:
    return f"py{sys.version_info.major}.{sys.version_info.minor}-vocab{vocab_size}-v{CORPUS_FORMAT}"


def build_default_corpus(cache_dir: Optional[str], vocab_size: int) -> tuple[str, str]:
    """(dataset_prefix, tokenizer_dir) of the default corpus for this Python and `vocab_size`, building it once."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 300:
        raise DataError(f"data.tokenizer_vocab_size: must be an integer >= 300, got {vocab_size!r}")
    root = os.path.join(os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir())), "default-corpus")
    key = corpus_key(vocab_size)
    final = os.path.join(root, key)
    result = (os.path.join(final, DATASET_NAME), os.path.join(final, TOKENIZER_NAME))
    if os.path.isdir(final):  # only ever renamed into place when complete
        return result
    try:
        os.makedirs(root, exist_ok=True)
        lock_file = open(os.path.join(root, f"{key}.lock"), "w")
    except OSError as exc:
        raise DataError(f"data.cache_dir: cannot create the default corpus under {root} ({exc}); set data.cache_dir "
                        f"to a writable directory") from None
    with lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if os.path.isdir(final):  # another process built it while we waited
            return result
        for stale in glob.glob(os.path.join(root, f"{key}.tmp-*")):  # left by a crashed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = os.path.join(root, f"{key}.tmp-{os.getpid()}")
        try:
            _build(tmp, vocab_size)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def _build(directory: str, vocab_size: int) -> None:
    start = time.perf_counter()
    os.makedirs(directory)
    documents = list(stdlib_documents())
    if not documents:
        raise DataError(f"default corpus: found no docstrings under {sysconfig.get_paths()['stdlib']}; this Python has "
                        f"no standard-library sources; preprocess your own data and set data.datasets")
    tokenizer = train_tokenizer(documents, vocab_size, os.path.join(directory, TOKENIZER_NAME))
    tokens = 0
    with IndexedDatasetWriter(os.path.join(directory, DATASET_NAME), vocab_size=tokenizer.vocab_size) as writer:
        for start_index in range(0, len(documents), 256):
            for ids in tokenizer.encode_batch(documents[start_index:start_index + 256]):
                ids.append(tokenizer.eod_id)
                writer.add_document(np.asarray(ids, dtype=np.int64))
                tokens += len(ids)
    manifest = {
        "python": sys.version.split()[0], "stdlib": sysconfig.get_paths()["stdlib"], "format": CORPUS_FORMAT,
        "vocab_size_requested": vocab_size, "vocab_size": tokenizer.vocab_size, "documents": len(documents),
        "characters": sum(len(d) for d in documents), "tokens": tokens,
        "build_seconds": round(time.perf_counter() - start, 2), "builder_pid": os.getpid(),
    }
    with open(os.path.join(directory, MANIFEST_NAME), "w") as f:
        json.dump(manifest, f, indent=2)


def corpus_manifest(dataset_prefix: str) -> dict:
    """The manifest (sizes, Python version) of a default corpus given its dataset prefix."""
    with open(os.path.join(os.path.dirname(dataset_prefix), MANIFEST_NAME)) as f:
        return json.load(f)


__all__ = ["build_default_corpus", "corpus_manifest", "default_cache_dir", "stdlib_documents", "module_text"]
