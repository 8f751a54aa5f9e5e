"""Choosing the next token from vocabulary-parallel logits, without gathering the logits.

Each tensor-parallel rank holds the logits of a contiguous slice of the (padded) vocabulary. Greedy decoding takes
every shard's (max, argmax) and combines them; sampling uses the Gumbel-max trick (argmax of logits / T + Gumbel
noise draws exactly from softmax(logits / T)), so it too is a distributed argmax. top-k gathers each shard's top k
candidates; top-p gathers each shard's top m (m doubling until the nucleus is provably inside what was gathered),
with the softmax normaliser from one max and one sum all-reduce. The noise of request i at decode step t comes from a
generator seeded by (seed, i, t) over the full vocabulary, so the tokens do not depend on the layout or the batch.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist

from gpt3d.config.generate import SamplingConfig
from gpt3d.parallel import comm
from gpt3d.parallel.context import Group

_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
_FIRST_NUCLEUS_GATHER = 64


def gather_stacked(x: torch.Tensor, group: Group, op_name: str) -> torch.Tensor:
    """[group size, *x.shape]: every rank's `x`, in rank order."""
    if group.size == 1:
        return x.unsqueeze(0)
    x = x.contiguous()
    group.account(op_name, x.numel() * x.element_size() * group.size)
    return torch.stack(comm.gather_list(x, group))


def gumbel_noise(seed: int, request_ids: Sequence[int], step: int, vocab: int) -> torch.Tensor:
    """[len(request_ids), vocab] standard Gumbel noise, a function of (seed, request id, step) only."""
    rows = []
    for rid in request_ids:
        key = (seed * _MIX[0] + int(rid) * _MIX[1] + step * _MIX[2]) & (2**63 - 1)
        u = torch.rand(vocab, generator=torch.Generator().manual_seed(key), dtype=torch.float64)
        rows.append(-torch.log(-torch.log(u.clamp(1e-300, 1.0 - 1e-16))))
    return torch.stack(rows).float()


def _argmax_over(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per row, the id of the largest value over the last dim (lowest id among equal values)."""
    best = values.max(dim=-1, keepdim=True).values
    big = torch.iinfo(ids.dtype).max
    return torch.where(values == best, ids, torch.full_like(ids, big)).min(dim=-1).values


def distributed_argmax(local: torch.Tensor, vocab_start: int, group: Group) -> torch.Tensor:
    """Global argmax over vocabulary shards [b, V/tp] -> [b] token ids (the same on every rank)."""
    if group.size == 1:
        return local.argmax(dim=-1) + vocab_start  # the first maximum, as the combination below
    values, idx = local.max(dim=-1)
    pair = torch.stack([values.double(), (idx + vocab_start).double()], dim=-1)  # ids are exact in float64
    pairs = gather_stacked(pair, group, "sample_argmax")  # [tp, b, 2]
    return _argmax_over(pairs[..., 0].t(), pairs[..., 1].t().long())


def log_normaliser(local: torch.Tensor, group: Group) -> torch.Tensor:
    """log sum exp over the whole vocabulary of vocabulary-sharded logits [b, V/tp] -> [b]."""
    top = comm.all_reduce(local.max(dim=-1).values.clone(), group, "sample_max", dist.ReduceOp.MAX)
    sum_exp = comm.all_reduce((local - top.unsqueeze(-1)).exp().sum(dim=-1), group, "sample_sum")
    return top + sum_exp.log()


def token_logprobs(local: torch.Tensor, tokens: torch.Tensor, vocab_start: int, group: Group) -> torch.Tensor:
    """log softmax(logits)[token] per row, from vocabulary shards."""
    log_z = log_normaliser(local, group)
    rel = tokens - vocab_start
    mine = (rel >= 0) & (rel < local.shape[-1])
    picked = local.gather(-1, rel.clamp(0, local.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    picked = comm.all_reduce(torch.where(mine, picked, torch.zeros_like(picked)), group, "sample_pick")
    return picked - log_z


def _gather_top(local: torch.Tensor, m: int, vocab_start: int, group: Group) -> tuple[torch.Tensor, torch.Tensor,
                                                                                          torch.Tensor]:
    """Each shard's top m -> (values [b, tp*m] sorted descending, their ids, the largest m-th value of any shard:
    every token not gathered is <= it)."""
    m = min(m, local.shape[-1])
    values, idx = local.topk(m, dim=-1)
    exhausted = m == local.shape[-1]
    boundary = torch.full_like(values[:, -1], float("-inf")) if exhausted else values[:, -1]
    packed = torch.cat([values.double(), (idx + vocab_start).double(), boundary.double().unsqueeze(-1)], dim=-1)
    all_packed = gather_stacked(packed, group, "sample_topk")  # [tp, b, 2m+1]
    vals = all_packed[..., :m].permute(1, 0, 2).reshape(local.shape[0], -1).float()
    ids = all_packed[..., m:2 * m].permute(1, 0, 2).reshape(local.shape[0], -1).long()
    bound = all_packed[..., 2 * m].max(dim=0).values.float()
    order = vals.argsort(dim=-1, descending=True, stable=True)
    return vals.gather(-1, order), ids.gather(-1, order), bound


def _nucleus(values: torch.Tensor, log_z: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep mask of descending-sorted candidates: a token is kept while the mass of the tokens before it is < top_p
    (Hugging Face's TopPLogitsWarper rule; the most likely token is always kept)."""
    probs = (values - log_z.unsqueeze(-1)).exp()
    before = probs.cumsum(dim=-1) - probs
    keep = before < top_p
    keep[:, 0] = True
    return keep


def _top_p_candidates(local: torch.Tensor, vocab_start: int, top_p: float, group: Group
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, ids, keep) of the nucleus over the full sharded vocabulary, gathering as little as possible."""
    log_z = log_normaliser(local, group)
    m = _FIRST_NUCLEUS_GATHER
    while True:
        vals, ids, bound = _gather_top(local, m, vocab_start, group)
        keep = _nucleus(vals, log_z, top_p)
        probs = (vals - log_z.unsqueeze(-1)).exp()
        certain = vals > bound.unsqueeze(-1)  # a sorted prefix: no ungathered token lies above the boundary
        enough = (probs * certain).sum(dim=-1) >= top_p
        if bool(enough.all()) or m >= local.shape[-1]:
            return vals, ids, keep
        m *= 4


def next_tokens(local: torch.Tensor, vocab_start: int, vocab_padded: int, group: Group, cfg: SamplingConfig,
                request_ids: Sequence[int], step: int, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The next token of every row [b] from this rank's vocabulary shard of the logits [b, V/tp] (fp32)."""
    if cfg.greedy:
        return distributed_argmax(local, vocab_start, group)
    scaled = local / cfg.temperature
    if noise is None:
        noise = gumbel_noise(cfg.seed, request_ids, step, vocab_padded)
    if cfg.top_k is None and cfg.top_p is None:
        shard_noise = noise[:, vocab_start:vocab_start + local.shape[-1]]
        return distributed_argmax(scaled + shard_noise, vocab_start, group)
    if cfg.top_k is not None:
        vals, ids, _ = _gather_top(scaled, cfg.top_k, vocab_start, group)
        kth = vals[:, min(cfg.top_k, vals.shape[-1]) - 1:min(cfg.top_k, vals.shape[-1])]
        keep = vals >= kth  # ties with the k-th value stay, as in Hugging Face's TopKLogitsWarper
        if cfg.top_p is not None:
            kept_vals = vals.masked_fill(~keep, float("-inf"))
            keep &= _nucleus(kept_vals, torch.logsumexp(kept_vals, dim=-1), cfg.top_p)
    else:
        vals, ids, keep = _top_p_candidates(scaled, vocab_start, cfg.top_p, group)
    scores = (vals + noise.gather(-1, ids)).masked_fill(~keep, float("-inf"))
    return _argmax_over(scores, ids)
