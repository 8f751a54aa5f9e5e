"""A random GPT-2-shaped model with odd sizes and a padded vocabulary, as a gpt3d checkpoint and as its
`gpt3d convert --to hf` export, plus the left-padded Hugging Face generate reference."""
from __future__ import annotations

import os
from pathlib import Path

import torch

# 3 layers (pp2 splits 2 + 1), 6 heads of 6, vocabulary 101 padded to 128 (tp2: 64 rows each), context 96.
SHAPE = dict(vocab_size=101, n_positions=96, n_embd=36, n_layer=3, n_head=6, initializer_range=0.2)
PROMPTS = [[5, 7, 9, 11, 2], [3, 4], [50, 60, 70, 80, 90, 100, 1, 2, 3], [17], [8, 8, 8, 1, 99, 42, 0]]
NEW_TOKENS = 64


def make_models(root: Path, **shape) -> tuple[Path, Path]:
    """(gpt3d checkpoint, HF export of that checkpoint) under `root`, built once (SHAPE, updated by `shape`)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt3d.cli import main
    ckpt, export = root / "ckpt", root / "hf"
    if (export / "config.json").is_file():
        return ckpt, export
    torch.manual_seed(1234)
    GPT2LMHeadModel(GPT2Config(**{**SHAPE, **shape})).save_pretrained(root / "random", safe_serialization=True)
    assert main(["convert", str(root / "random"), str(ckpt), "--from", "hf", "--quiet"]) == 0
    assert main(["convert", str(ckpt), str(export), "--to", "hf", "--quiet"]) == 0
    return ckpt, export


def hf_greedy(export: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """GPT2LMHeadModel.generate(do_sample=False) on the left-padded batch (no EOS stop)."""
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(export).eval()
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=0, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[:, width:].tolist()


def threads_one() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def hf_scores(export: Path, pairs) -> list[tuple[float, bool]]:
    """(sum log p(continuation | context), greedy) of each pair by a full forward of the HF model."""
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(export).eval()
    out = []
    with torch.no_grad():
        for ctx, cont in pairs:
            logp = torch.log_softmax(model(torch.tensor([list(ctx) + list(cont)])).logits[0].float(), -1)
            pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
            target = torch.tensor(cont)
            out.append((logp[pos, target].sum().item(), bool((logp[pos].argmax(-1) == target).all())))
    return out


def hf_induction(export: Path, seqs: torch.Tensor) -> torch.Tensor:
    """[layers, heads] induction scores from Hugging Face's attention probabilities (eager attention) on sequences of
    a random half repeated: mean attention from query t of the second half to key t - half + 1."""
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(export, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = model(seqs, output_attentions=True).attentions
    half = seqs.shape[1] // 2
    q = torch.arange(half, 2 * half)
    return torch.stack([a[:, :, q, q - half + 1].mean(dim=(0, 2)) for a in attentions])
