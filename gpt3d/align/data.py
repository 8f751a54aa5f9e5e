"""PPO's data: prompts from a JSONL file, rollouts as packed rows (prompt + completion, one per row), and the
pretraining sequences of the ptx term as packed rows. Rows use the channels of gpt3d/finetune/data.py."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from gpt3d.config.run import RunConfig
from gpt3d.finetune import data as ch
from gpt3d.finetune.data import PackedDataset, pack
from gpt3d.finetune.examples import Encoded, Encoders, LineError, read_jsonl

NO_TOKEN = -1  # fills a prompt row after its last token


def build_prompts(cfg: RunConfig) -> dict[str, PackedDataset]:
    """finetune.data's {"prompt"} lines, rendered with the chat template up to the assistant prefix, as rows of token
    ids filled with NO_TOKEN; a prompt leaving less than finetune.ppo.max_new_tokens of train.seq_len is cut from
    the left (finetune.overlong=truncate, counted) or refused."""
    from gpt3d.data.gpt_dataset import tokenizer_for
    ft = cfg.finetune
    tokenizer = tokenizer_for(cfg.data, cfg.data.cache_dir)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise LineError(f"{cfg.data.tokenizer_dir or 'the default tokenizer'}: {tokenizer.vocab_size} ids do not fit "
                        f"model.vocab_size={cfg.model.vocab_size}")
    encoders = Encoders(tokenizer, ft.sft.template, ft.classify)
    room = cfg.train.seq_len - ft.ppo.max_new_tokens
    prompts, truncated = [], 0
    for number, obj in read_jsonl(ft.data):
        where = f"{ft.data}:{number}"
        ids = encoders.prompt_ids(obj, where)
        if len(ids) > room:
            if ft.overlong == "refuse":
                raise LineError(f"{where}: prompt of {len(ids)} tokens + finetune.ppo.max_new_tokens="
                                f"{ft.ppo.max_new_tokens} exceeds train.seq_len={cfg.train.seq_len}; shorten it, raise "
                                f"train.seq_len, or set finetune.overlong=truncate")
            ids, truncated = ids[-room:], truncated + 1
        prompts.append(ids)
    rows = np.full((len(prompts), max(len(p) for p in prompts)), NO_TOKEN, dtype=np.int64)
    for i, p in enumerate(prompts):
        rows[i, :len(p)] = p
    data = PackedDataset(rows, cfg.train.seed, len(prompts), truncated)
    return {"train": data, "valid": data, "test": data}


def prompt_of(row: np.ndarray) -> list[int]:
    return [int(t) for t in row if t != NO_TOKEN]


def rollout_rows(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], seq_len: int,
                 pad_id: int) -> np.ndarray:
    """[n, CHANNELS, seq_len]: prompt + completion per row; labels on the completion tokens (the token before each
    predicts it), the completion's last token marked (the reward model reads its score there)."""
    examples = []
    for prompt, completion in zip(prompts, completions):
        ex = Encoded()
        ex.add_sequence([(list(prompt), False), (list(completion), True)], 0)
        ex.marks[-1] = 1
        examples.append(ex)
    return pack(examples, seq_len, pad_id, several=False)


def pretraining_rows(samples: np.ndarray) -> np.ndarray:
    """Pretraining samples [n, seq_len + 1] -> packed rows [n, CHANNELS, seq_len]: one causal sequence, every
    token learned."""
    n, width = samples.shape
    out = np.zeros((n, ch.CHANNELS, width - 1), dtype=np.int64)
    out[:, ch.TOKENS] = samples[:, :-1]
    out[:, ch.LABELS] = samples[:, 1:]
    out[:, ch.POSITIONS] = np.arange(width - 1)
    out[:, ch.EXAMPLES] = 1
    return out


def build_pretraining(cfg: RunConfig):
    """finetune.ppo.ptx_data as a dataset of (steps x ptx batch) samples of train.seq_len + 1 tokens."""
    from gpt3d.config.data import DataConfig, DatasetSource
    from gpt3d.data.gpt_dataset import build_datasets
    ppo = cfg.finetune.ppo
    data = DataConfig(datasets=[DatasetSource(ppo.ptx_data)], tokenizer_dir=cfg.data.tokenizer_dir, split="1,0,0")
    size = cfg.train.steps * ptx_batch_size(cfg)
    return build_datasets(data, cfg.train.seq_len, cfg.train.seed, {"train": size}, cfg.model.vocab_size)["train"]


def ptx_batch_size(cfg: RunConfig) -> int:
    return cfg.finetune.ppo.ptx_batch_size or cfg.train.global_batch_size
