"""Tensor parallelism: sharded versions of the model's layers, and the plan that swaps them in by name.

Column-parallel linears (qkv, fc1) split their output rows; row-parallel linears (proj, fc2) split their input
columns and keep the full bias; the embedding and the tied head split the padded vocabulary, and the loss is computed
from the vocabulary shards without gathering the logits. With sequence parallelism the residual stream between the
GEMMs is split along the sequence: all-gather before a column-parallel GEMM, reduce-scatter after a row-parallel one.
"""
from __future__ import annotations

import fnmatch
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from gpt3d import kernels
from gpt3d.model.cross_entropy import check_labels, loss_workspace
from gpt3d.model.gpt import GPTStage
from gpt3d.model.init import ShardInfo
from gpt3d.model.layers import Dropout, Embedding, LMHead, PaddedVocabBias

from . import comm
from .context import Group
from .random import StreamContext
from .weight_grad import WeightGradStore, linear


def _sharded_param(shape: tuple[int, ...], like: nn.Parameter, shard: ShardInfo) -> nn.Parameter:
    param = nn.Parameter(torch.empty(shape, device=like.device, dtype=like.dtype))
    param.__dict__.update({k: v for k, v in like.__dict__.items() if not k.startswith("_")})
    param.shard = shard
    return param


class ColumnParallelLinear(nn.Module):
    def __init__(self, linear: nn.Linear, group: Group, sequence_parallel: bool):
        super().__init__()
        out, inp = linear.weight.shape
        assert out % group.size == 0, f"{out} output features not divisible by tp={group.size}"
        shard = ShardInfo(0, group.rank, group.size)
        self.weight = _sharded_param((out // group.size, inp), linear.weight, shard)
        self.bias = _sharded_param((out // group.size,), linear.bias, shard)
        self.group, self.sequence_parallel = group, sequence_parallel
        self.weight_grad_store: Optional[WeightGradStore] = None  # set: weight gradients go through it
        self.bf16_matmul = getattr(linear, "bf16_matmul", "auto")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sequence_parallel:
            x = comm.gather_from_sp(x, self.group)
            return linear(x, self.weight, self.bias, self.weight_grad_store, self.bf16_matmul)
        # entering the column-parallel region: the backward's input-gradient sum (comm.CopyToTensorParallel's) runs
        # inside the linear's backward, overlapping its weight gradient
        return linear(x, self.weight, self.bias, self.weight_grad_store, self.bf16_matmul, reduce_input_grad=self.group)


class RowParallelLinear(nn.Module):
    def __init__(self, linear: nn.Linear, group: Group, sequence_parallel: bool):
        super().__init__()
        out, inp = linear.weight.shape
        assert inp % group.size == 0, f"{inp} input features not divisible by tp={group.size}"
        self.weight = _sharded_param((out, inp // group.size), linear.weight, ShardInfo(1, group.rank, group.size))
        self.bias = linear.bias  # full bias, added once after the reduction
        if sequence_parallel:
            self.bias.tp_partial_grad = True  # each rank sees only its sequence shard: sum grads over TP
        self.group, self.sequence_parallel = group, sequence_parallel
        self.weight_grad_store: Optional[WeightGradStore] = None  # set: weight gradients go through it
        self.bf16_matmul = getattr(linear, "bf16_matmul", "auto")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.group.size == 1:  # nothing to reduce: the bias goes into the GEMM, as nn.Linear's
            return linear(x, self.weight, self.bias, self.weight_grad_store, self.bf16_matmul)
        partial = linear(x, self.weight, None, self.weight_grad_store, self.bf16_matmul)
        if self.sequence_parallel:
            out = comm.reduce_scatter_to_sp(partial, self.group)
        else:
            out = comm.reduce_from_tp(partial, self.group)
        return out + self.bias


class VocabParallelEmbedding(Embedding):
    """Token rows split across TP (contiguous ranges of the padded vocabulary); positions replicated."""

    def __init__(self, embed: Embedding, group: Group, sequence_parallel: bool):
        nn.Module.__init__(self)
        rows, dim = embed.tok.weight.shape
        self.per_rank = rows // group.size
        self.vocab_start = group.rank * self.per_rank
        self.tok = nn.Embedding(self.per_rank, dim, device=embed.tok.weight.device)
        self.tok.weight = _sharded_param((self.per_rank, dim), embed.tok.weight, ShardInfo(0, group.rank, group.size))
        self.pos = embed.pos
        if sequence_parallel:
            self.pos.weight.tp_partial_grad = True
        self.dropout = embed.dropout
        self.group, self.sequence_parallel = group, sequence_parallel

    def forward(self, ids: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        if ids.shape[1] > self.pos.weight.shape[0]:
            raise ValueError(f"sequence of {ids.shape[1]} tokens exceeds the position table "
                             f"({self.pos.weight.shape[0]}); use shorter sequences or a larger model.seq_len")
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.per_rank)
        partial = F.embedding(local.masked_fill(outside, 0), self.tok.weight, sparse=self.tok.sparse)
        partial = partial.masked_fill(outside.unsqueeze(-1), 0.0)
        seq = ids.shape[1]
        if self.sequence_parallel:
            tokens = comm.reduce_scatter_to_sp(partial, self.group)
            shard = seq // self.group.size
            rows = slice(self.group.rank * shard, (self.group.rank + 1) * shard)
        else:
            tokens = comm.reduce_from_tp(partial, self.group)
            rows = slice(0, seq)
        # Explicit position ids (packed examples) or the table's first rows.
        pos = self.pos.weight[rows] if positions is None else F.embedding(positions[:, rows], self.pos.weight)
        return self.dropout(tokens + pos)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Mean token cross-entropy from vocabulary-sharded logits [..., per-rank vocab]: only [tokens]-sized vectors (the
    max of the local log-sum-exps; the target logit and the rescaled local sums) cross the TP group, never the
    logits. As gpt3d.model.cross_entropy: padded columns (beyond `real_cols` of this shard) are skipped rather than
    biased to -inf, nothing logits-sized is saved, and the backward overwrites the logits' storage with the gradient
    (gpt3d.kernels.cross_entropy_grad_)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, vocab_start: int, real_cols: int, group: Group,
                impl: str):
        work = loss_workspace(logits)
        local_lse = kernels.logsumexp_rows(work, real_cols, impl=impl)  # -inf on a shard of padding only
        top = comm.all_reduce(local_lse.clone(), group, "ce_max", dist.ReduceOp.MAX)
        local = labels.reshape(-1) - vocab_start
        in_range = (local >= 0) & (local < real_cols)
        index = local.clamp(0, work.shape[1] - 1)
        target = torch.where(in_range, work.gather(-1, index.unsqueeze(-1)).squeeze(-1).float(), 0.0)
        stats = comm.all_reduce(torch.stack([target, (local_lse - top).exp()]), group, "ce_stats")
        lse = top + stats[1].log()
        ctx.save_for_backward(work, local, lse)
        ctx.real_cols, ctx.shape, ctx.in_dtype, ctx.impl = real_cols, logits.shape, logits.dtype, impl
        return (lse - stats[0]).mean()

    @staticmethod
    def backward(ctx, grad):
        work, local, lse = ctx.saved_tensors  # a label outside this shard's [0, real_cols) subtracts no one-hot
        kernels.cross_entropy_grad_(work, lse, local, grad / local.numel(), ctx.real_cols, impl=ctx.impl)
        return work.view(ctx.shape).to(ctx.in_dtype), None, None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, vocab_start: int, vocab_size: int,
                                 group: Group, impl: str = "auto") -> torch.Tensor:
    """Labels are global ids in [0, vocab_size); this rank's logits cover [vocab_start, vocab_start + their width),
    of which ids >= vocab_size are padding. The logits' storage is overwritten by the backward."""
    check_labels(labels, vocab_size, "vocab_parallel_cross_entropy")
    real_cols = min(max(vocab_size - vocab_start, 0), logits.shape[-1])
    return _VocabParallelCrossEntropy.apply(logits, labels, vocab_start, real_cols, group, impl)


class VocabParallelLMHead(LMHead):
    def __init__(self, head: LMHead, group: Group, sequence_parallel: bool, padded_vocab: int):
        nn.Module.__init__(self)
        self.vocab_size = head.vocab_size
        self.bf16_matmul, self.impl = head.bf16_matmul, head.impl
        self.group, self.sequence_parallel = group, sequence_parallel
        if head.weight is not None:
            rows, dim = head.weight.shape
            self.weight = _sharded_param((rows // group.size, dim), head.weight, ShardInfo(0, group.rank, group.size))
        else:
            self.weight = None
        self.per_rank = padded_vocab // group.size
        self.vocab_start = group.rank * self.per_rank
        self.pad_bias = PaddedVocabBias(self.per_rank, self.vocab_start, self.vocab_size)

    def _local_logits(self, hidden: torch.Tensor, weight: torch.Tensor, pad_bias: bool = True) -> torch.Tensor:
        """This shard's logits; `pad_bias` writes -inf-like values into the padded vocabulary columns (the loss skips
        those columns instead)."""
        hidden = comm.gather_from_sp(hidden, self.group) if self.sequence_parallel else comm.copy_to_tp(hidden,
                                                                                                          self.group)
        bias = self.pad_bias(hidden) if pad_bias else None
        return self.project(hidden, weight, bias)

    def logits(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Full logits (gathered: for inference and interop only; training never calls this)."""
        local = self._local_logits(hidden, weight)
        if self.group.size == 1:
            return local
        return torch.cat(comm.gather_list(local, self.group), dim=-1)

    def loss(self, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return vocab_parallel_cross_entropy(self._local_logits(hidden, weight, pad_bias=False), labels,
                                            self.vocab_start, self.vocab_size, self.group, self.impl)


# module-name pattern -> how to shard it
PLAN = {
    "blocks.*.attn.qkv": "column",
    "blocks.*.attn.proj": "row",
    "blocks.*.mlp.fc1": "column",
    "blocks.*.mlp.fc2": "row",
    "embed": "vocab_embedding",
    "head": "vocab_head",
}


def use_parallel_linears(stage: GPTStage, group: Group, sequence_parallel: bool) -> None:
    """Swap only the blocks' linears for their column/row-parallel versions (before materialisation), asserting
    every one was found: with tp=1 they compute what nn.Linear does, and their weight gradients can go through a
    WeightGradStore (the B/W split, fused accumulation into the main gradient)."""
    found = {pattern: 0 for pattern, kind in PLAN.items() if kind in ("column", "row")}
    for name, module in list(stage.named_modules()):
        for pattern in found:
            if fnmatch.fnmatchcase(name, pattern) and isinstance(module, nn.Linear):
                parent_name, _, attr = name.rpartition(".")
                cls = ColumnParallelLinear if PLAN[pattern] == "column" else RowParallelLinear
                setattr(stage.get_submodule(parent_name), attr, cls(module, group, sequence_parallel))
                found[pattern] += 1
    missing = {pattern: n for pattern, n in found.items() if n != len(stage.blocks)}
    assert not missing, f"linears found per pattern {missing}, expected {len(stage.blocks)} each"


class _StoreFedProjection:
    """An LM head's GEMM with its weight gradient through a WeightGradStore, always at once (a zero-bubble schedule
    defers only the blocks' linears): with gradient-accumulation fusion its GEMM writes the main gradient."""

    weight_grad_store: Optional[WeightGradStore] = None

    def project(self, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return linear(hidden, weight, bias, self.weight_grad_store, self.bf16_matmul, keep_fp32=True, immediate=True)


class StoreFedLMHead(_StoreFedProjection, LMHead):
    """The LM head (tp=1), store-fed."""


class StoreFedVocabParallelLMHead(_StoreFedProjection, VocabParallelLMHead):
    """The vocabulary-parallel LM head (tp>1), store-fed: each rank's GEMM writes its rows of the weight gradient."""


_STORE_FED = {LMHead: StoreFedLMHead, VocabParallelLMHead: StoreFedVocabParallelLMHead}


def use_store_fed_head(stage: GPTStage) -> None:
    """Make the stage's LM head (if it has one; the model's or its vocabulary-parallel version) store-fed: the same
    module state under the subclass, so parameters, names and the state dict are unchanged."""
    if stage.head is not None:
        store_fed = _STORE_FED.get(type(stage.head))
        assert store_fed is not None, f"expected an LMHead or VocabParallelLMHead, found {type(stage.head).__name__}"
        stage.head.__class__ = store_fed


def attach_weight_grad_store(chunks: list[nn.Module], store: Optional[WeightGradStore]) -> int:
    """Route the weight gradients of every column/row-parallel linear (and store-fed LM head) through `store`;
    returns how many weights."""
    count = 0
    for chunk in chunks:
        for module in chunk.modules():
            if isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
                module.weight_grad_store = store
                module.weight.weight_grad_by_store = store is not None  # autograd gives it none: the store does
                count += 1
        if isinstance(getattr(chunk, "head", None), _StoreFedProjection):
            chunk.head.weight_grad_store = store
            weight = chunk.head_weight()
            weight.weight_grad_by_store = store is not None
            # Tied to this stage's embedding: the lookup's gradient still comes through autograd, after the head's.
            weight.weight_grad_also_autograd = store is not None and chunk.head.weight is None
            count += 1
    return count


def apply_tensor_parallel(stage: GPTStage, group: Group, sequence_parallel: bool, rng_context: StreamContext) -> None:
    """Swap the stage's layers for their sharded versions (asserting every target exists) and route dropout to the
    right random stream. Runs on the meta-device model, before weights are materialised."""
    expected = {"blocks.*.attn.qkv": len(stage.blocks), "blocks.*.attn.proj": len(stage.blocks),
                "blocks.*.mlp.fc1": len(stage.blocks), "blocks.*.mlp.fc2": len(stage.blocks),
                "embed": int(stage.first), "head": int(stage.last)}
    found = {pattern: 0 for pattern in PLAN}
    for name, module in list(stage.named_modules()):
        for pattern, kind in PLAN.items():
            if not fnmatch.fnmatchcase(name, pattern) or module is None:
                continue
            found[pattern] += 1
            parent_name, _, attr = name.rpartition(".")
            parent = stage.get_submodule(parent_name) if parent_name else stage
            if kind == "column":
                new = ColumnParallelLinear(module, group, sequence_parallel)
            elif kind == "row":
                new = RowParallelLinear(module, group, sequence_parallel)
            elif kind == "vocab_embedding":
                new = VocabParallelEmbedding(module, group, sequence_parallel)
            else:
                new = VocabParallelLMHead(module, group, sequence_parallel, stage.cfg.padded_vocab_size)
            setattr(parent, attr, new)
    missing = {p: (found[p], expected[p]) for p in PLAN if found[p] != expected[p]}
    assert not missing, f"tensor-parallel plan targets not found as expected (found, expected): {missing}"

    for block in stage.blocks.values():
        heads = block.attn.layout
        if heads is not None and group.size > 1:
            per_rank = heads.shape[0] // group.size
            block.attn.layout = heads[group.rank * per_rank:(group.rank + 1) * per_rank].contiguous()
        # Attention probabilities are split by head: distinct masks per TP rank.
        block.attn.attn_dropout.rng_context = rng_context
        if sequence_parallel:
            for p in (*block.ln1.parameters(), *block.ln2.parameters()):
                p.tp_partial_grad = True
    if sequence_parallel:
        # The residual stream is sharded by sequence: its dropout masks must differ per TP rank.
        for module in stage.modules():
            if isinstance(module, Dropout) and module.rng_context is None:
                module.rng_context = rng_context
        if stage.final_ln is not None:
            for p in stage.final_ln.parameters():
                p.tp_partial_grad = True
