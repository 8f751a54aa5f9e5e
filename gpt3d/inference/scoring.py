"""Log-likelihood scoring of continuations (evaluation): sum log p(continuation | context), its token count, and
whether greedy decoding would have produced it, in any tp x pp layout.

Requests sharing a context share its computation: each distinct context is run once (a batch of left-padded
contexts), its KV cache rows are then repeated for every continuation of that context, and only the continuation
tokens run again. The first continuation token is scored from the context's last logits. Under pipeline parallelism
the micro-batches of a batch flow through the stages back to back; the last stage broadcasts the scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .forward import stage_forward
from .kv_cache import KVCache
from .pipeline import from_last_stage
from .sampling import distributed_argmax, log_normaliser


@dataclass
class Score:
    logprob: float  # sum over the continuation tokens
    tokens: int
    greedy: bool  # every continuation token is the argmax of its position
    token_logprobs: list[float]  # per continuation token


def _token_scores(local: torch.Tensor, targets: torch.Tensor, vocab_start: int, group) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """(log p(target), target == argmax) per position of vocabulary-sharded logits [..., V/tp]."""
    flat = local.reshape(-1, local.shape[-1])
    t = targets.reshape(-1)
    log_z = log_normaliser(flat, group)
    rel = t - vocab_start
    mine = (rel >= 0) & (rel < flat.shape[-1])
    picked = flat.gather(-1, rel.clamp(0, flat.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    from gpt3d.parallel import comm
    picked = comm.all_reduce(torch.where(mine, picked, torch.zeros_like(picked)), group, "score_pick")
    best = distributed_argmax(flat, vocab_start, group)
    return (picked - log_z).view(targets.shape), (best == t).view(targets.shape)


class Scorer:
    """Scores (context, continuation) pairs with an InferenceEngine's stage."""

    def __init__(self, engine):
        self.engine = engine

    def _forward(self, inputs, positions, cache, shape):
        """One stage forward in the pipeline: receive from the previous stage, compute, send on."""
        e, link = self.engine, self.engine.link
        if not e.stage.first:
            link.recv_flag()
            inputs = link.recv_hidden(shape, e.dtype)
        out = stage_forward(e.stage, inputs, positions, cache, last_only=False)
        if not e.stage.last:
            link.send_flag(True)
            link.send_hidden(out)
        return out

    def score(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 16) -> list[Score]:
        """Every rank passes the same pairs; returns the scores in order on every rank."""
        e = self.engine
        seq_len = e.cfg.seq_len
        for i, (ctx, cont) in enumerate(pairs):
            if not ctx or not cont:
                raise ValueError(f"request {i}: context and continuation must both be non-empty")
            if len(ctx) + len(cont) > seq_len + 1:  # the last continuation token is never an input
                raise ValueError(f"request {i}: {len(ctx)} context + {len(cont)} continuation tokens exceed the "
                                 f"context of {seq_len} (+1); truncate the context from the left")
        contexts: dict[tuple, list[int]] = {}
        for i, (ctx, _) in enumerate(pairs):
            contexts.setdefault(tuple(ctx), []).append(i)
        # longest contexts first: batches of similar lengths waste little padding
        order = sorted(contexts, key=len, reverse=True)
        results: list = [None] * len(pairs)
        groups = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        for group in groups:  # sends are asynchronous: stage r works on a group while stage r+1 finishes the last
            self._score_group(group, contexts, pairs, results)
        e.link.finish()
        return from_last_stage(self.engine.ctx, results)

    def _score_group(self, group_contexts, contexts, pairs, results) -> None:
        from .engine import left_pad
        e = self.engine
        dev = e.ctx.device
        ids, positions = left_pad([list(c) for c in group_contexts], 0)
        members = [(g, i) for g, c in enumerate(group_contexts) for i in contexts[c]]
        longest = max(len(pairs[i][1]) for _, i in members)
        attn = next(iter(e.stage.blocks.values())).attn
        cache = KVCache([int(b) for b in e.stage.blocks], len(group_contexts), e.local_heads, attn.d_head,
                        ids.shape[1], e.dtype, dev)
        out = self._forward(ids.to(dev), positions.to(dev), cache, (*ids.shape, e.cfg.d_model))
        # repeat each context's cache row for each of its continuations; the continuations run after it
        rows = torch.tensor([g for g, _ in members], device=dev)
        cont_cache = KVCache(list(cache.keys), len(members), e.local_heads, attn.d_head,
                             ids.shape[1] + longest, e.dtype, dev)
        for layer in cache.keys:
            cont_cache.keys[layer][:, :, :ids.shape[1]] = cache.keys[layer][rows]
            cont_cache.values[layer][:, :, :ids.shape[1]] = cache.values[layer][rows]
        cont_cache.positions[:, :ids.shape[1]] = cache.positions[rows]
        cont_cache.length = ids.shape[1]
        cont_ids = torch.zeros(len(members), longest, dtype=torch.long)
        cont_pos = torch.full((len(members), longest), -1, dtype=torch.long)
        for r, (g, i) in enumerate(members):
            cont = list(pairs[i][1])
            cont_ids[r, :len(cont)] = torch.tensor(cont)
            cont_pos[r, :len(cont)] = torch.arange(len(cont)) + len(group_contexts[g])
        # the last continuation token is never an input; right padding has position -1 (masked like left padding)
        inputs, in_pos = cont_ids[:, :-1], cont_pos[:, :-1]
        for r, (_, i) in enumerate(members):
            in_pos[r, len(pairs[i][1]) - 1:] = -1
        cont_out = None
        if inputs.shape[1] > 0:
            cont_out = self._forward(inputs.to(dev), in_pos.to(dev), cont_cache, (*inputs.shape, e.cfg.d_model))
        if not e.stage.last:
            return
        first_logits = out[:, -1][rows]  # [members, V/tp]: predicts the first continuation token
        local = first_logits.unsqueeze(1) if cont_out is None else torch.cat([first_logits.unsqueeze(1), cont_out], 1)
        lp, hit = _token_scores(local, cont_ids.to(dev), e.vocab_start, e.ctx.tp_group)
        for r, (_, i) in enumerate(members):
            n = len(pairs[i][1])
            results[i] = Score(float(lp[r, :n].sum()), n, bool(hit[r, :n].all()), lp[r, :n].tolist())

    def attention_maps(self, sequences: torch.Tensor) -> dict[int, torch.Tensor]:
        """This rank's attention probabilities {layer: [b, local heads, s, s]} over full sequences [b, s]."""
        e = self.engine
        attn = next(iter(e.stage.blocks.values())).attn
        cache = KVCache([int(b) for b in e.stage.blocks], sequences.shape[0], e.local_heads, attn.d_head,
                        sequences.shape[1], e.dtype, e.ctx.device)
        cache.attention_probs = {}
        positions = torch.arange(sequences.shape[1]).expand_as(sequences)
        self._forward(sequences.to(e.ctx.device), positions.to(e.ctx.device), cache, (*sequences.shape, e.cfg.d_model))
        e.link.finish()
        return cache.attention_probs
