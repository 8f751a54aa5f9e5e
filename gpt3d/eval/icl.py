"""In-context learning diagnostics (Olsson et al. 2022, "In-context Learning and Induction Heads").

- ICL score: the mean loss at a late token minus the mean loss at an early token of held-out text. The paper uses
  tokens 500 and 50 of 1024-token contexts; gpt3d scales both to the model's context n: early = round(50/1024 n),
  late = round(500/1024 n) (token indices from 0; the loss at token i is -log p(x_i | x_<i)). Negative = the model
  uses its context. Held-out text: the validation and test documents of the default corpus, concatenated and cut into
  windows of n tokens.
- Induction score of a head: on sequences of T random tokens repeated twice, the mean attention from each token of
  the second repeat to the token right after its earlier occurrence (query t, key t - T + 1), averaged over the
  queries and sequences. An induction head scores near 1; a head attending uniformly scores about 1 / t.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

EARLY, LATE, PAPER_CONTEXT = 50, 500, 1024


def icl_positions(seq_len: int) -> tuple[int, int]:
    return max(1, round(EARLY / PAPER_CONTEXT * seq_len)), max(2, round(LATE / PAPER_CONTEXT * seq_len))


def held_out_windows(tokenizer, seq_len: int, limit: int) -> list[list[int]]:
    from .builtin import _held_out_documents
    ids: list[int] = []
    for doc in _held_out_documents():
        ids.extend(tokenizer.encode(doc) + [tokenizer.eod_id])
        if len(ids) >= seq_len * limit:
            break
    return [ids[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)][:limit]


def icl_score(engine, windows: list[list[int]], batch_size: int) -> dict:
    seq_len = len(windows[0])
    early, late = icl_positions(seq_len)
    scores = engine.score([(w[:1], w[1:]) for w in windows], batch_size)
    loss_at = lambda i: -sum(s.token_logprobs[i - 1] for s in scores) / len(scores)  # noqa: E731
    return {"icl_score": loss_at(late) - loss_at(early), "early_token": early, "late_token": late,
            "loss_early": loss_at(early), "loss_late": loss_at(late), "windows": len(windows), "context": seq_len}


def repeated_random_tokens(vocab: int, batch: int, half: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(0, vocab, (batch, half), generator=gen)
    return torch.cat([first, first], dim=1)


def induction_scores(engine, vocab: int, batch: int = 8, half: int = 0, seed: int = 0) -> torch.Tensor:
    """[n_layers, n_heads] induction scores, on every rank (each rank computes its layers' heads, then all share)."""
    from gpt3d.inference.scoring import Scorer
    cfg = engine.cfg
    half = half or cfg.seq_len // 2
    seqs = repeated_random_tokens(vocab, batch, half, seed)
    maps = Scorer(engine).attention_maps(seqs)
    q = torch.arange(half, 2 * half)
    k = q - half + 1
    local = {layer: probs[:, :, q, k].mean(dim=(0, 2)).float().cpu() for layer, probs in maps.items()}
    out = torch.zeros(cfg.n_layers, cfg.n_heads)
    parts = [local]
    if dist.is_initialized() and engine.ctx.layout.world_size > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (engine.ctx.tp_rank, local))
    else:
        parts = [(0, local)]
    for tp_rank, per_layer in parts:
        for layer, heads in per_layer.items():
            n = heads.shape[0]
            out[layer, tp_rank * n:(tp_rank + 1) * n] = heads
    return out


def induction_heatmap(scores: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1 + 0.5 * scores.shape[1], 1 + 0.4 * scores.shape[0]))
    im = ax.imshow(scores.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(scores.shape[1]))
    ax.set_yticks(range(scores.shape[0]))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="induction score")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
