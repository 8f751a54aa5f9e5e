"""Each tensor-parallel layer equals its unsharded layer: outputs and every gradient (input and weights, gathered to
full shape), for tp in {1, 2, 4}, with and without sequence parallelism.

One world per TP degree runs every layer on the same deterministic inputs and returns (parallel, reference) pairs; the
tests compare them. Tolerance as in test_model_parity.py (fp32 sums in another order): 1e-6 absolute + 1e-5 relative.
Under sequence parallelism the gradients of parameters each rank sees only a sequence shard of (LayerNorms, the
row-parallel bias, the position table) are partial sums; the layer marks them `tp_partial_grad` and the gradient
synchroniser sums them over TP, which the checks do explicitly.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from gpt3d.config.model import ModelConfig
from gpt3d.model.gpt import GPTStage
from gpt3d.model.init import materialize
from gpt3d.model.layers import Embedding, LMHead
from gpt3d.parallel.context import Group
from gpt3d.parallel.random import StreamContext, seed_everything
from gpt3d.parallel.tensor import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                   VocabParallelLMHead, apply_tensor_parallel, vocab_parallel_cross_entropy)


def masked_padded_logits(logits: torch.Tensor, vocab_start: int, vocab_size: int) -> torch.Tensor:
    """The reference semantics of vocabulary padding: padded columns (global id >= vocab_size) are -inf."""
    valid = torch.arange(vocab_start, vocab_start + logits.shape[-1], device=logits.device) < vocab_size
    return logits.masked_fill(~valid, float("-inf"))

from .harness import register, results

TP_DEGREES = (1, 2, 4)
B, S = 2, 8  # micro-batch, sequence (divisible by every TP degree, for sequence parallelism)
CFG = ModelConfig(n_layers=2, d_model=64, n_heads=4, seq_len=S, vocab_size=250, vocab_pad_multiple=64)
ATOL, RTOL = 1e-6, 1e-5


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class Checker:
    """Collects (name, parallel value gathered to full shape, reference value) on one rank."""

    def __init__(self, group: Group):
        self.group = group
        self.pairs: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def gather(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        if self.group.size == 1:
            return t.detach().clone()
        parts = [torch.empty_like(t) for _ in range(self.group.size)]
        dist.all_gather(parts, t.detach().contiguous(), group=self.group.pg)
        return torch.cat(parts, dim=dim)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach().clone()
        if self.group.size > 1:
            dist.all_reduce(t, group=self.group.pg)
        return t

    def add(self, name: str, parallel: torch.Tensor, reference: torch.Tensor) -> None:
        self.pairs.append((name, parallel.detach().clone(), reference.detach().clone()))

    def seq_local(self, t: torch.Tensor, sp: bool) -> torch.Tensor:
        """This rank's input: its sequence shard under sequence parallelism, else the whole (replicated) tensor."""
        return (t.chunk(self.group.size, dim=1)[self.group.rank] if sp else t).detach().clone().requires_grad_()

    def seq_full(self, t: torch.Tensor, sp: bool) -> torch.Tensor:
        return self.gather(t, 1) if sp else t.detach()

    def param_grad(self, p: nn.Parameter) -> torch.Tensor:
        """A parameter's gradient at full shape: shards gathered, TP-partial sums added up."""
        if getattr(p, "tp_partial_grad", False):
            return self.sum(p.grad)
        shard = getattr(p, "shard", None)
        return self.gather(p.grad, shard.dim) if shard is not None else p.grad


def _column(c: Checker, sp: bool) -> None:
    t, r = c.group.size, c.group.rank
    ref = nn.Linear(64, 96)
    x, gy = _randn(B, S, 64, seed=1), _randn(B, S, 96, seed=2)
    xr = x.clone().requires_grad_()
    y_ref = ref(xr)
    (y_ref * gy).sum().backward()

    layer = ColumnParallelLinear(ref, c.group, sp)
    with torch.no_grad():
        layer.weight.copy_(ref.weight.chunk(t, 0)[r])
        layer.bias.copy_(ref.bias.chunk(t, 0)[r])
    xin = c.seq_local(x, sp)
    y = layer(xin)  # [b, s, 96 / t]: this rank's output columns, whole sequence
    (y * gy.chunk(t, -1)[r]).sum().backward()
    c.add("output", c.gather(y, -1), y_ref)
    c.add("input grad", c.seq_full(xin.grad, sp), xr.grad)
    c.add("weight grad", c.param_grad(layer.weight), ref.weight.grad)
    c.add("bias grad", c.param_grad(layer.bias), ref.bias.grad)


def _row(c: Checker, sp: bool) -> None:
    t, r = c.group.size, c.group.rank
    ref = nn.Linear(96, 64)
    x, gy = _randn(B, S, 96, seed=3), _randn(B, S, 64, seed=4)
    xr = x.clone().requires_grad_()
    y_ref = ref(xr)
    (y_ref * gy).sum().backward()

    layer = RowParallelLinear(copy.deepcopy(ref), c.group, sp)
    with torch.no_grad():
        layer.weight.copy_(ref.weight.chunk(t, 1)[r])
        layer.bias.copy_(ref.bias)
    layer.bias.grad = None
    xin = x.chunk(t, -1)[r].clone().requires_grad_()  # a row-parallel layer's input is split by features
    y = layer(xin)  # SP: this rank's sequence shard of the sum; else the whole sum, replicated
    (y * (gy.chunk(t, 1)[r] if sp else gy)).sum().backward()
    assert getattr(layer.bias, "tp_partial_grad", False) == sp
    c.add("output", c.seq_full(y, sp), y_ref)
    c.add("input grad", c.gather(xin.grad, -1), xr.grad)
    c.add("weight grad", c.param_grad(layer.weight), ref.weight.grad)
    c.add("bias grad", c.param_grad(layer.bias), ref.bias.grad)


def _embedding(c: Checker, sp: bool) -> None:
    t, r = c.group.size, c.group.rank
    ref = materialize(Embedding(CFG), CFG, seed=5)
    ids = torch.randint(0, CFG.vocab_size, (B, S), generator=torch.Generator().manual_seed(6))
    ids[0, :3] = torch.tensor([0, CFG.vocab_size - 1, CFG.padded_vocab_size // 2])  # both ends, a shard boundary
    gy = _randn(B, S, 64, seed=7)
    y_ref = ref(ids)
    (y_ref * gy).sum().backward()

    layer = VocabParallelEmbedding(copy.deepcopy(ref), c.group, sp)
    with torch.no_grad():
        layer.tok.weight.copy_(ref.tok.weight.chunk(t, 0)[r])
    layer.pos.weight.grad = None
    y = layer(ids)
    (y * (gy.chunk(t, 1)[r] if sp else gy)).sum().backward()
    c.add("output", c.seq_full(y, sp), y_ref)
    c.add("token table grad", c.param_grad(layer.tok.weight), ref.tok.weight.grad)
    c.add("position table grad", c.param_grad(layer.pos.weight), ref.pos.weight.grad)


def _cross_entropy(c: Checker, sp: bool) -> None:
    """vocab_parallel_cross_entropy on vocabulary shards (padded columns holding ordinary values, which it must skip)
    vs F.cross_entropy on the full logits with the padding masked."""
    t, r = c.group.size, c.group.rank
    V, vocab = CFG.padded_vocab_size, CFG.vocab_size
    logits = _randn(B, S, V, seed=8) * 3
    labels = torch.randint(0, vocab, (B, S), generator=torch.Generator().manual_seed(9))
    labels[0, :2] = torch.tensor([0, vocab - 1])
    full = logits.clone().requires_grad_()
    loss_ref = F.cross_entropy(masked_padded_logits(full, 0, vocab).flatten(0, 1), labels.flatten())
    loss_ref.backward()

    per_rank = V // t
    local = logits.chunk(t, -1)[r].clone().requires_grad_()
    # .clone(): the loss overwrites its input's storage with the gradient (its input is the head's dead output)
    loss = vocab_parallel_cross_entropy(local.clone(), labels, r * per_rank, vocab, c.group)
    loss.backward()
    c.add("loss", loss, loss_ref)
    c.add("logits grad", c.gather(local.grad, -1), full.grad)
    assert float(full.grad[..., vocab:].abs().max()) == 0.0  # padded columns take no gradient
    # bf16 logits are read in place, not copied to fp32: the loss and gradient bits of their fp32 widening, the
    # gradient rounded once to bf16, by the fused kernels and by their PyTorch reference alike
    for impl in ("fused", "reference"):
        half = local.detach().to(torch.bfloat16)
        got_leaf, want_leaf = half.clone().requires_grad_(), half.float().requires_grad_()
        got = vocab_parallel_cross_entropy(got_leaf.clone(), labels, r * per_rank, vocab, c.group, impl)
        got.backward()
        want = vocab_parallel_cross_entropy(want_leaf.clone(), labels, r * per_rank, vocab, c.group, impl)
        want.backward()
        assert torch.equal(got, want), (impl, got, want)
        assert torch.equal(got_leaf.grad, want_leaf.grad.to(torch.bfloat16)), impl


def _lm_head(c: Checker, sp: bool) -> None:
    """The tied head's loss from (sequence-sharded, under SP) hidden states and vocabulary-sharded weights."""
    t, r = c.group.size, c.group.rank
    weight = (_randn(CFG.padded_vocab_size, 64, seed=10) * 0.2)
    hidden = _randn(B, S, 64, seed=11)
    labels = torch.randint(0, CFG.vocab_size, (B, S), generator=torch.Generator().manual_seed(12))
    wr, hr = weight.clone().requires_grad_(), hidden.clone().requires_grad_()
    loss_ref = LMHead(CFG, own_weight=False).loss(hr, wr, labels)
    loss_ref.backward()

    head = VocabParallelLMHead(LMHead(CFG, own_weight=False), c.group, sp, CFG.padded_vocab_size)
    w = weight.chunk(t, 0)[r].clone().requires_grad_()
    h = c.seq_local(hidden, sp)
    loss = head.loss(h, w, labels)
    loss.backward()
    c.add("loss", loss, loss_ref)
    c.add("hidden grad", c.seq_full(h.grad, sp), hr.grad)
    c.add("weight grad", c.gather(w.grad, 0), wr.grad)


def _block(c: Checker, sp: bool) -> None:
    """A whole transformer block (attention + MLP, through the model's build path)."""
    ref = materialize(GPTStage(CFG, [1], first=False, last=False), CFG, seed=13)
    x, gy = _randn(B, S, 64, seed=14), _randn(B, S, 64, seed=15)
    xr = x.clone().requires_grad_()
    y_ref = ref(xr)
    (y_ref * gy).sum().backward()

    with torch.device("meta"):
        stage = GPTStage(CFG, [1], first=False, last=False)
    tracker = seed_everything(0, c.group.rank, 0, torch.device("cpu"))
    apply_tensor_parallel(stage, c.group, sp, StreamContext(tracker))
    materialize(stage, CFG, seed=13)
    xin = c.seq_local(x, sp)
    y = stage(xin)
    (y * (gy.chunk(c.group.size, 1)[c.group.rank] if sp else gy)).sum().backward()
    c.add("output", c.seq_full(y, sp), y_ref)
    c.add("input grad", c.seq_full(xin.grad, sp), xr.grad)
    ref_params = dict(ref.named_parameters())
    names = [name for name, _ in stage.named_parameters()]
    assert sorted(names) == sorted(ref_params)
    for name, p in stage.named_parameters():
        c.add(f"{name} grad", c.param_grad(p), ref_params[name].grad)


LAYERS = {"column": _column, "row": _row, "embedding": _embedding, "cross_entropy": _cross_entropy,
          "lm_head": _lm_head, "block": _block}


def layer_checks(rank: int, world_size: int, tp: int) -> dict:
    """Task for a world of `tp` ranks: every layer, with and without SP. Rank 0 returns the pairs."""
    assert world_size == tp
    group = Group("tp", list(range(tp)), rank, dist.group.WORLD if tp > 1 else None)
    torch.manual_seed(0)
    out = {}
    for sp in (False, True):
        for name, fn in LAYERS.items():
            checker = Checker(group)
            fn(checker, sp)
            out[(name, sp)] = checker.pairs
    return out if rank == 0 else {}


for _tp in TP_DEGREES:
    register(_tp, f"layers tp={_tp}", layer_checks, _tp)


@pytest.mark.parametrize("sp", [False, True], ids=["no-sp", "sp"])
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("tp", TP_DEGREES)
def test_layer_matches_unsharded(tp, layer, sp):
    pairs = results(tp, f"layers tp={tp}")[0][(layer, sp)]
    assert pairs
    for name, got, ref in pairs:
        assert got.shape == ref.shape, f"{layer} {name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL, msg=lambda m: f"{layer} {name}: {m}")
