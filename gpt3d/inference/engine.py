"""The inference engine: batched, KV-cached generation in any tensor x pipeline layout.

Every rank of the job calls `generate` with the same prompts. The batch is split into micro-batches of requests; a
decode step of one micro-batch flows through the pipeline stages while the others are in flight, and the last stage
sends the sampled tokens back to the first stage (gpt3d/inference/pipeline.py). Tensor-parallel ranks hold their
heads' KV cache and their vocabulary shard of the logits; tokens are chosen without gathering the logits
(gpt3d/inference/sampling.py). The completions are returned on every rank.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

from gpt3d.config.generate import SamplingConfig
from gpt3d.config.model import ModelConfig
from gpt3d.model.gpt import GPTStage
from gpt3d.parallel.context import Layout, ParallelContext

from .forward import stage_forward
from .kv_cache import KVCache
from .pipeline import StageLink, from_last_stage
from .sampling import next_tokens, token_logprobs

TRUNCATE = ("error", "left")


class PromptError(ValueError):
    """A prompt the model cannot take (empty, unknown token ids, or longer than the context)."""


@dataclass
class Completion:
    index: int  # the request id (position in the caller's input unless given)
    prompt: list[int]  # the prompt tokens the model saw (after --truncate left)
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "length" (max_new_tokens), "eos" or "stop"
    logprobs: Optional[list[float]] = None
    truncated: int = 0  # prompt tokens dropped from the left


@dataclass
class _MicroBatch:
    rows: list[Completion]
    ids: torch.Tensor  # left-padded prompts [b, L]
    positions: torch.Tensor  # [b, L], -1 on padding
    cache: KVCache
    active: bool = True
    finished: list[bool] = field(default_factory=list)

    def positions_at(self, step: int) -> torch.Tensor:
        """[b, 1] positions of the tokens fed at decode step `step` >= 1 (known on every stage)."""
        lengths = torch.tensor([len(r.prompt) + step - 1 for r in self.rows], dtype=torch.long)
        return lengths.unsqueeze(1)


def fit_prompt(prompt: Sequence[int], cfg: ModelConfig, max_new: int, truncate: str, index: int) -> tuple[list[int], int]:
    """(the prompt to run, tokens dropped): checks ids and length against the context (model.seq_len)."""
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise PromptError(f"request {index}: empty prompt; give at least one token")
    bad = [t for t in prompt if not 0 <= t < cfg.vocab_size]
    if bad:
        raise PromptError(f"request {index}: token ids {bad[:5]} are outside the vocabulary [0, {cfg.vocab_size})")
    room = cfg.seq_len - max_new
    if room < 1:
        raise PromptError(f"--max-new-tokens {max_new} leaves no room for a prompt in the context of {cfg.seq_len} "
                          f"tokens; use at most {cfg.seq_len - 1}")
    if len(prompt) <= room:
        return prompt, 0
    if truncate == "left":
        return prompt[-room:], len(prompt) - room
    raise PromptError(f"request {index}: prompt of {len(prompt)} tokens + {max_new} new tokens exceeds the context "
                      f"of {cfg.seq_len} tokens; shorten the prompt, lower --max-new-tokens, or pass --truncate left "
                      f"to keep its last {room} tokens")


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    positions = torch.full((len(prompts), width), -1, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        positions[i, width - len(p):] = torch.arange(len(p))
    return ids, positions


def split_even(n: int, parts: int) -> list[range]:
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (i < extra)
        out.append(range(start, start + size))
        start += size
    return out


class InferenceEngine:
    """Generation (and scoring, for evaluation) with this rank's part of the model."""

    def __init__(self, stage: GPTStage, ctx: ParallelContext, cfg: ModelConfig, micro_batches: Optional[int] = None):
        self.stage, self.ctx, self.cfg = stage.eval(), ctx, cfg
        self.micro_batches = micro_batches or ctx.layout.pp
        self.dtype = next(stage.parameters()).dtype
        attn = next(iter(stage.blocks.values())).attn
        self.local_heads = attn.qkv.weight.shape[0] // (3 * attn.d_head)
        self.link = StageLink(ctx)
        head = stage.head if stage.last else None
        self.vocab_start = getattr(head, "vocab_start", 0) if head is not None else 0

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, source: str = "gpt3d", tp: int = 1, pp: int = 1,
             dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
             ctx: Optional[ParallelContext] = None, micro_batches: Optional[int] = None) -> "InferenceEngine":
        """Load a checkpoint into layout tp x pp. With several ranks, torch.distributed must be initialised with
        world size tp * pp (every rank calls this); `ctx` may be given instead (its dp must be 1)."""
        from .loading import load_stage
        if ctx is None:
            world = dist.get_world_size() if dist.is_initialized() else 1
            if world != tp * pp:
                raise ValueError(f"tp {tp} x pp {pp} = {tp * pp} ranks, but the job has {world}; start tp*pp ranks")
            rank = dist.get_rank() if dist.is_initialized() else 0
            ctx = ParallelContext(Layout(tp, pp, 1), rank, torch.device(device))
        stage, cfg = load_stage(path, source, ctx, dtype)
        return cls(stage, ctx, cfg, micro_batches)

    @classmethod
    def from_state_dict(cls, state_dict: dict, cfg: ModelConfig, ctx: ParallelContext,
                        dtype: torch.dtype = torch.float32, micro_batches: Optional[int] = None) -> "InferenceEngine":
        """An engine over full (unsharded) gpt3d weights held in memory, e.g. a policy being fine-tuned."""
        from .loading import build_stage, check_inference_layout, fill_stage
        check_inference_layout(cfg, ctx.layout.tp, ctx.layout.pp)

        def read(name, start, size):
            return state_dict[name][tuple(slice(s, s + n) for s, n in zip(start, size))]
        return cls(fill_stage(build_stage(cfg, ctx), read, dtype, ctx.device), ctx, cfg, micro_batches)

    # -- generation -----------------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
                 request_ids: Optional[Sequence[int]] = None, truncate: str = "error",
                 stop: Optional[Callable[[list[int]], bool]] = None,
                 on_complete: Optional[Callable[[Completion], None]] = None) -> list[Completion]:
        """Complete every prompt (token ids). `stop(tokens)` may end a completion early (evaluated on the first and
        last stage: it must depend only on the tokens). `on_complete` is called on the last pipeline stage as each
        completion finishes. Returns the completions, in input order, on every rank."""
        if truncate not in TRUNCATE:
            raise ValueError(f"truncate={truncate!r}: expected one of {list(TRUNCATE)}")
        ids = list(range(len(prompts))) if request_ids is None else [int(i) for i in request_ids]
        rows = []
        for rid, p in zip(ids, prompts):
            fitted, dropped = fit_prompt(p, self.cfg, sampling.max_new_tokens, truncate, rid)
            rows.append(Completion(rid, fitted, logprobs=[] if sampling.logprobs else None, truncated=dropped))
        if not rows:
            return []
        mbs = [self._micro_batch([rows[i] for i in r], sampling) for r in split_even(len(rows), self.micro_batches)]
        for step in range(sampling.max_new_tokens):
            for mb in mbs:
                if mb.active:
                    self._step(mb, step, sampling, stop, on_complete)
        self.link.finish()
        return from_last_stage(self.ctx, rows)

    def score(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 16):
        """log p(continuation | context) of (context ids, continuation ids) pairs (see gpt3d/inference/scoring.py)."""
        from .scoring import Scorer
        return Scorer(self).score(pairs, batch_size)

    def _micro_batch(self, rows: list[Completion], sampling: SamplingConfig) -> _MicroBatch:
        ids, positions = left_pad([r.prompt for r in rows], 0)
        attn = next(iter(self.stage.blocks.values())).attn
        cache = KVCache([int(i) for i in self.stage.blocks], len(rows), self.local_heads, attn.d_head,
                        ids.shape[1] + sampling.max_new_tokens, self.dtype, self.ctx.device)
        return _MicroBatch(rows, ids.to(self.ctx.device), positions.to(self.ctx.device), cache,
                           finished=[False] * len(rows))

    def _record(self, mb: _MicroBatch, tokens: list[int], logprobs: Optional[list[float]], sampling: SamplingConfig,
                stop, on_complete) -> None:
        """Append this step's tokens to the unfinished rows and decide which rows are done."""
        for i, (row, token) in enumerate(zip(mb.rows, tokens)):
            if mb.finished[i]:
                continue
            row.tokens.append(token)
            if logprobs is not None and row.logprobs is not None:
                row.logprobs.append(logprobs[i])
            reason = None
            if sampling.eos_token_id is not None and token == sampling.eos_token_id:
                reason = "eos"
            elif stop is not None and stop(row.tokens):
                reason = "stop"
            elif len(row.tokens) >= sampling.max_new_tokens:
                reason = "length"
            if reason is not None:
                row.finish_reason, mb.finished[i] = reason, True
                if on_complete is not None and self.stage.last:
                    on_complete(row)
        if all(mb.finished):
            mb.active = False

    def _step(self, mb: _MicroBatch, step: int, sampling: SamplingConfig, stop, on_complete) -> None:
        stage, link = self.stage, self.link
        if step == 0:
            inputs, positions = mb.ids, mb.positions
        else:
            positions = mb.positions_at(step).to(self.ctx.device)
        if stage.first:
            if step > 0:
                if not stage.last:  # the tokens of the previous step come back from the last stage
                    tokens = link.recv_tokens(len(mb.rows)).tolist()
                    self._record(mb, tokens, None, sampling, stop, None)
                    if not mb.active:
                        link.send_flag(False)
                        return
                inputs = torch.tensor([r.tokens[-1] for r in mb.rows], dtype=torch.long,
                                      device=self.ctx.device).unsqueeze(1)
        else:
            if not link.recv_flag():
                mb.active = False
                if not stage.last:
                    link.send_flag(False)
                return
            inputs = link.recv_hidden((len(mb.rows), positions.shape[1], self.cfg.d_model), self.dtype)
        out = stage_forward(stage, inputs, positions, mb.cache)
        if not stage.last:
            link.send_flag(True)
            link.send_hidden(out)
            return
        ids = [r.index for r in mb.rows]
        tokens = next_tokens(out, self.vocab_start, self.cfg.padded_vocab_size, self.ctx.tp_group, sampling, ids, step)
        logprobs = token_logprobs(out, tokens, self.vocab_start, self.ctx.tp_group).tolist() if sampling.logprobs \
            else None
        self._record(mb, tokens.tolist(), logprobs, sampling, stop, on_complete)
        if not stage.first and step + 1 < sampling.max_new_tokens:
            link.send_tokens(tokens)
