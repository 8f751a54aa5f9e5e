"""Training data for the induction-head recipe (docs/generate-and-eval.md): a random run of tokens, repeated.

Each document is `length` tokens: a run of k uniformly random tokens (k drawn from [min_period, max_period]) repeated
until the document is full. Past the first k tokens every token is predictable only by finding the previous occurrence
of the current token and copying what followed it, which is the circuit an induction head implements (Olsson et al.
2022). With documents exactly one context long, gpt3d's Megatron-style packing starts every training window at a
document start.

    python -m gpt3d.eval.induction_data PREFIX [--documents N] [--vocab V] [--length L] [--seed S]

writes PREFIX.bin + PREFIX.idx, to train with `data.datasets: [{prefix: PREFIX}]` (configs/induction.yaml).
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterator

import numpy as np

from gpt3d.data.indexed_dataset import write_indexed_dataset


def periodic_documents(documents: int, vocab: int, length: int, min_period: int, max_period: int,
                       seed: int) -> Iterator[np.ndarray]:
    """`documents` arrays of `length` token ids: a random run of [min_period, max_period] tokens, tiled."""
    if not 1 <= min_period <= max_period < length:
        raise ValueError(f"periods [{min_period}, {max_period}]: need 1 <= min <= max < length ({length}) so that "
                         "every document repeats its run at least once")
    if vocab < 2 or documents < 1:
        raise ValueError(f"need vocab >= 2 and documents >= 1, got vocab {vocab}, documents {documents}")
    rng = np.random.default_rng(seed)
    for _ in range(documents):
        run = rng.integers(0, vocab, int(rng.integers(min_period, max_period + 1)))
        yield np.resize(run, length)


def write_induction_dataset(prefix: str, documents: int = 80_000, vocab: int = 64, length: int = 64,
                            min_period: int = 8, max_period: int = 24, seed: int = 0) -> None:
    write_indexed_dataset(prefix, periodic_documents(documents, vocab, length, min_period, max_period, seed), vocab)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpt3d.eval.induction_data", description=__doc__.split("\n")[0])
    parser.add_argument("prefix", help="output PREFIX (writes PREFIX.bin + PREFIX.idx)")
    parser.add_argument("--documents", type=int, default=80_000, help="number of documents (default 80000)")
    parser.add_argument("--vocab", type=int, default=64, help="token ids 0..V-1 (default 64 = model.vocab_size)")
    parser.add_argument("--length", type=int, default=64, help="tokens per document (default 64 = model.seq_len)")
    parser.add_argument("--min-period", type=int, default=8, help="shortest repeated run (default 8)")
    parser.add_argument("--max-period", type=int, default=24, help="longest repeated run (default 24)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        write_induction_dataset(args.prefix, args.documents, args.vocab, args.length, args.min_period,
                                args.max_period, args.seed)
    except ValueError as exc:
        print(f"induction_data: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.prefix}.bin/.idx: {args.documents} documents of {args.length} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
