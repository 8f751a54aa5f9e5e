"""Fine-tuning data: a JSONL file -> packed rows [CHANNELS, seq_len] (int64), read like a pre-training dataset.

A row holds one or more whole examples (greedy, in file order; `finetune.sft.pack: false` puts one per row) and
padding. Its channels: token ids, position ids (restarting in each example), segment ids (unique per sequence in the
row; padding tokens get their own), branch ids (gpt3d/model/packing.py), labels (next token or IGNORE), marks
(reward: rank of a completion's last token; classify: 1 at an extract token), targets (classify: the label at the
extract token) and the example number within the row (0 for padding).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpt3d.config.run import RunConfig

from .examples import Encoded, Encoders, LineError, read_jsonl, truncate
from .losses import IGNORE

TOKENS, POSITIONS, SEGMENTS, BRANCHES, LABELS, MARKS, TARGETS, EXAMPLES = range(8)
CHANNELS = 8
PAD_SEGMENT = 1 << 30  # padding token t of a row is segment PAD_SEGMENT + t: it attends only to itself


def pack(examples: list[Encoded], seq_len: int, pad_id: int, several: bool) -> np.ndarray:
    """[rows, CHANNELS, seq_len]: examples placed greedily in order, each row padded."""
    rows: list[list[Encoded]] = []
    used = seq_len
    for ex in examples:
        if not several or used + len(ex) > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(ex)
        used += len(ex)
    out = np.zeros((len(rows), CHANNELS, seq_len), dtype=np.int64)
    out[:, TOKENS] = pad_id
    out[:, SEGMENTS] = PAD_SEGMENT + np.arange(seq_len)
    out[:, LABELS] = IGNORE
    for r, row in enumerate(rows):
        at, segment = 0, 0
        for number, ex in enumerate(row, 1):
            n = len(ex)
            span = slice(at, at + n)
            out[r, TOKENS, span] = ex.tokens
            out[r, POSITIONS, span] = ex.positions
            out[r, SEGMENTS, span] = np.asarray(ex.segments) + segment
            out[r, BRANCHES, span] = ex.branches
            out[r, LABELS, span] = ex.labels
            out[r, MARKS, span] = ex.marks
            out[r, TARGETS, span] = ex.targets
            out[r, EXAMPLES, span] = number
            segment += max(ex.segments) + 1
            at += n
    return out


@dataclass
class PackedDataset:
    """Rows in a fresh seeded order every epoch; sample i is row order_e[i mod rows] of epoch e = i // rows."""
    rows: np.ndarray
    seed: int
    examples: int
    truncated: int

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> np.ndarray:
        epoch, i = divmod(int(index), len(self.rows))
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
        return self.rows[order[i]]


def encode_file(cfg: RunConfig, tokenizer) -> tuple[list[Encoded], int]:
    """Every example of finetune.data encoded for train.objective, fitted to train.seq_len; (examples, truncated)."""
    ft = cfg.finetune
    encoders = Encoders(tokenizer, ft.sft.template, ft.classify)
    encode = encoders.encoder(cfg.train.objective)
    limit = cfg.train.seq_len
    examples, truncated = [], 0
    for number, obj in read_jsonl(ft.data):
        where = f"{ft.data}:{number}"
        ex = encode(obj, where)
        if len(ex) > limit:
            if ft.overlong == "refuse":
                raise LineError(f"{where}: {len(ex)} tokens, more than train.seq_len={limit}; shorten the example, "
                                f"raise train.seq_len, or set finetune.overlong=truncate")
            ex = truncate(ex, limit, where)
            truncated += 1
        if cfg.train.objective == "sft" and not any(label >= 0 for label in ex.labels):
            raise LineError(f"{where}: no completion token left to learn (after truncation to {limit} tokens); "
                            f"shorten the prompt or raise train.seq_len")
        examples.append(ex)
    return examples, truncated


def build_finetune_data(cfg: RunConfig) -> dict[str, PackedDataset]:
    """Tokenise, encode and pack finetune.data (errors name the line); the same rows serve validation."""
    from gpt3d.data.gpt_dataset import tokenizer_for
    tokenizer = tokenizer_for(cfg.data, cfg.data.cache_dir)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise LineError(f"{cfg.data.tokenizer_dir or 'the default tokenizer'}: {tokenizer.vocab_size} ids do not fit "
                        f"model.vocab_size={cfg.model.vocab_size}")
    examples, truncated = encode_file(cfg, tokenizer)
    several = cfg.train.objective != "sft" or cfg.finetune.sft.pack
    rows = pack(examples, cfg.train.seq_len, tokenizer.eod_id, several)
    data = PackedDataset(rows, cfg.train.seed, len(examples), truncated)
    return {"train": data, "valid": data, "test": data}
