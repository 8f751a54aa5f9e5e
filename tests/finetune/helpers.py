"""Shared pieces of the fine-tuning tests: a tiny BPE, synthetic JSONL tasks, configs and packed batches."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from gpt3d.config import load_config

LETTERS = "abcdef"
TOKENIZER_TEXT = ("reverse the word: " * 4 + " ".join(LETTERS[i % 6] * (1 + i % 4) for i in range(300))
                  + " good bad yes no <|user|>\n <|assistant|>\n <|system|>\n be brief <|start|> <|delim|> <|extract|>" * 3)


def make_tokenizer(directory: Path) -> str:
    from gpt3d.data.tokenizer import train_tokenizer
    train_tokenizer([TOKENIZER_TEXT], 300, str(directory))
    return str(directory)


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def words(n: int, seed: int, lo: int = 2, hi: int = 5) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def finetune_config(objective: str, data: str, tokenizer: str, extra: list[str] = ()):
    return load_config(None, ["preset=tiny-test", "model.vocab_size=300", "model.n_layers=2", "model.d_model=32",
                              "model.n_heads=2", "model.seq_len=64", "train.threads=1", f"train.objective={objective}",
                              f"finetune.data={data}", f"data.tokenizer_dir={tokenizer}", *extra])


def packed_batch(cfg):
    """Every row of cfg's data as one micro-batch."""
    from gpt3d.finetune.data import build_finetune_data
    from gpt3d.finetune.objectives import PackedBatch
    rows = build_finetune_data(cfg)["train"].rows
    return PackedBatch.from_rows(rows, torch.device("cpu"))


def gpt3d_model(cfg, seed: int):
    from gpt3d.finetune.objectives import objective_for
    from gpt3d.model.gpt import build_gpt
    model = build_gpt(cfg.model, seed)
    model.objective = objective_for(cfg)
    return model
