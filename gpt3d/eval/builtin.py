"""Built-in offline tasks, so `gpt3d eval` runs on a fresh machine.

- lambada-corpus: LAMBADA-style last-word completion from held-out text of the default corpus (the Python standard
  library's docstrings and comments, gpt3d/data/corpus.py). Held out = the documents of the validation and test splits
  of the default split 969,30,1 (never in training batches). A passage is a window of up to 60 words that ends with
  a word of at least 4 letters which already occurred in the window (predictable from the wider context, LAMBADA's
  criterion); the task is to complete that word. Demonstrations come from the first third of the held-out documents,
  scored passages from the rest.
- icl-copy: copy a random 3-5 word sequence ("red fox sky = red fox sky").
- icl-lookup: look a key up in a list of key-value pairs given only in the prompt ("fox is red, cat is blue. cat is").
- icl-mapping: a fixed random mapping between 8 words and 8 others, shown only by the demonstrations
  ("lake -> seven"); multiple choice among the 8 values (chance 12.5%). Accuracy rises with K as the demonstrations
  cover the mapping.
The pattern tasks use common words and fixed seeds: every run scores the same examples.
"""
from __future__ import annotations

import random
import re
from typing import Optional

from .tasks import Example, Task

BUILTIN = ("lambada-corpus", "icl-copy", "icl-lookup", "icl-mapping")
WORDS = ("red", "blue", "green", "black", "white", "cat", "dog", "fox", "bird", "fish", "tree", "lake", "river", "stone",
         "house", "road", "book", "page", "line", "word", "file", "list", "value", "name", "time", "day", "year",
         "sun", "moon", "star", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
POOL = 200  # examples per split of the pattern tasks
_WORD = re.compile(r"^[A-Za-z]{4,}$")


def _held_out_documents() -> list[str]:
    from gpt3d.data.corpus import stdlib_documents
    from gpt3d.data.gpt_dataset import split_document_ranges
    docs = list(stdlib_documents())
    ranges = split_document_ranges(len(docs), [969 / 1000, 30 / 1000, 1 / 1000])
    return docs[ranges[1][0]:]


def _passages(text: str, window: int = 60) -> list[Example]:
    words = text.split()
    out = []
    for end in range(window, len(words) + 1, window // 2):
        chunk = words[end - window:end]
        last = chunk[-1]
        if _WORD.match(last) and last in chunk[:-1]:
            out.append(Example(" ".join(chunk[:-1]), target=last))
    return out


def lambada_corpus() -> Task:
    docs = _held_out_documents()
    cut = max(1, len(docs) // 3)
    demos = [p for d in docs[:cut] for p in _passages(d)]
    test = [p for d in docs[cut:] for p in _passages(d)]
    return Task("lambada-corpus", "completion", test, demos, example_separator="\n\n")


def _copy(rng: random.Random) -> Example:
    seq = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 5)))
    return Example(f"{seq} =", target=seq)


def _lookup(rng: random.Random) -> Example:
    keys = rng.sample(WORDS[5:20], 3)
    values = rng.sample(WORDS[:5] + WORDS[30:], 3)
    query = rng.randrange(3)
    pairs = ", ".join(f"{k} is {v}" for k, v in zip(keys, values))
    return Example(f"{pairs}. {keys[query]} is", target=values[query])


def _mapping_examples(rng: random.Random, n: int) -> list[Example]:
    keys = rng.sample(WORDS[5:30], 8)
    values = rng.sample(WORDS[30:], 8)
    out = []
    for _ in range(n):
        i = rng.randrange(8)
        out.append(Example(f"{keys[i]} ->", choices=list(values), gold=i))
    return out


def builtin_task(name: str, tokenizer=None, corpus_cache: Optional[str] = None) -> Task:
    if name == "lambada-corpus":
        return lambada_corpus()
    if name == "icl-mapping":
        rng = random.Random(2024)
        examples = _mapping_examples(rng, 2 * POOL)
        return Task(name, "multiple_choice", examples[POOL:], examples[:POOL], example_separator="\n",
                    normalization="none")
    make = {"icl-copy": _copy, "icl-lookup": _lookup}[name]
    rng = random.Random({"icl-copy": 7, "icl-lookup": 11}[name])
    examples = [make(rng) for _ in range(2 * POOL)]
    return Task(name, "completion", examples[POOL:], examples[:POOL], example_separator="\n")
