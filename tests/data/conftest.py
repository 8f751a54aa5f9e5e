"""Shared, session-scoped fixtures: a small BPE and the default corpus (built once, by two processes racing)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS_VOCAB = 512


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory):
    from gpt3d.data.corpus import stdlib_documents
    from gpt3d.data.tokenizer import train_tokenizer
    texts = [d for _, d in zip(range(60), stdlib_documents())]
    return train_tokenizer(texts, 600, tmp_path_factory.mktemp("small_bpe"))


@pytest.fixture(scope="session")
def default_corpus(tmp_path_factory):
    """Two processes call build_default_corpus on one empty cache at once, as the ranks of a job do: both must return
    the same complete corpus, built once under the lock. Returns (cache_dir, results of both, their pids)."""
    from gpt3d.data.corpus import corpus_key
    cache = str(tmp_path_factory.mktemp("gpt3d_cache"))
    stale = os.path.join(cache, "default-corpus", f"{corpus_key(CORPUS_VOCAB)}.tmp-99999999")
    os.makedirs(stale)  # as a build killed half-way would leave it: the next builder must clear it
    code = ("import json, sys; from gpt3d.data.corpus import build_default_corpus\n"
            f"print(json.dumps(build_default_corpus(sys.argv[1], {CORPUS_VOCAB})))\n")
    processes = [subprocess.Popen([sys.executable, "-c", code, cache], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err
    results = [tuple(json.loads(out)) for out, _ in outputs]
    return cache, results, [p.pid for p in processes]
