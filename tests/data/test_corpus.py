"""The offline default corpus: built once even when several processes ask at once, cached, and consistent."""
from __future__ import annotations

import os
import sysconfig
import time

import numpy as np

from gpt3d.data.corpus import build_default_corpus, corpus_key, corpus_manifest, module_text, stdlib_python_files
from gpt3d.data.indexed_dataset import IndexedDataset
from gpt3d.data.tokenizer import load_tokenizer

from .conftest import CORPUS_VOCAB


def test_concurrent_builders_share_one_build(default_corpus):
    cache, results, pids = default_corpus
    assert results[0] == results[1]
    prefix, tokenizer_dir = results[0]
    assert corpus_manifest(prefix)["builder_pid"] in pids
    root = os.path.join(cache, "default-corpus")
    key = corpus_key(CORPUS_VOCAB)
    assert sorted(os.listdir(root)) == [key, f"{key}.lock"]  # no temporary directory left, the stale one removed
    assert sorted(os.listdir(os.path.join(root, key))) == ["corpus.bin", "corpus.idx", "manifest.json", "tokenizer"]


def test_cached_corpus_is_reused(default_corpus):
    cache, results, _ = default_corpus
    before = os.stat(results[0][0] + ".bin").st_mtime_ns
    start = time.perf_counter()
    assert build_default_corpus(cache, CORPUS_VOCAB) == results[0]
    assert time.perf_counter() - start < 1.0
    assert os.stat(results[0][0] + ".bin").st_mtime_ns == before


def test_corpus_contents_match_manifest(default_corpus):
    _, results, _ = default_corpus
    prefix, tokenizer_dir = results[0]
    manifest = corpus_manifest(prefix)
    dataset = IndexedDataset(prefix)
    tokenizer = load_tokenizer(tokenizer_dir)
    assert tokenizer.vocab_size == manifest["vocab_size"] == CORPUS_VOCAB
    assert manifest["tokens"] == dataset.num_tokens > 500_000
    assert manifest["documents"] == len(dataset) > 100
    assert 1_000_000 < manifest["characters"] <= 24_000_000
    assert dataset.max_token_id() < CORPUS_VOCAB
    ends = dataset.tokens[np.cumsum(dataset.sequence_lengths.astype(np.int64)) - 1]
    assert np.all(ends == tokenizer.eod_id)  # <|endoftext|> after every document
    first = tokenizer.decode(dataset[0][:-1])
    assert first == next(module_text(open(p).read()) for p in stdlib_python_files() if module_text(open(p).read()))


def test_stdlib_walk_is_deterministic_and_skips_tests():
    files = stdlib_python_files()
    assert files == stdlib_python_files()
    root = sysconfig.get_paths()["stdlib"]
    parts = {part for f in files for part in os.path.relpath(f, root).split(os.sep)[:-1]}
    assert not parts & {"test", "tests", "idle_test", "site-packages"}
    assert os.path.join(root, "json", "decoder.py") in files


def test_module_text_takes_docstrings_and_comments_in_order():
    source = ('#!/usr/bin/env python\n# -*- coding: utf-8 -*-\n"""Module doc."""\n# first comment\n# continues\n'
              'x = 1  # inline comments are code context, skipped\n\ndef f():\n    """Function doc."""\n'
              '    # inside\n    return 1\n')
    assert module_text(source) == "Module doc.\n\nfirst comment continues\n\nFunction doc.\n\ninside"
