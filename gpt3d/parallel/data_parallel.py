"""Data-parallel gradient synchronisation over flat, bucketed gradient buffers.

Parameters and their gradients live in flat buffers, one pair per bucket (about `bucket_mb` of fp32 gradients, filled
in the reverse order of the forward so buckets complete early in backward): the weights in the compute dtype
(`param_data`: bf16/fp16, or fp32) and the gradients always in fp32 (`grad_data`). Each parameter's `main_grad` is its
view of `grad_data`. In fp32, `param.grad` is that same view and autograd accumulates into it in place. In bf16/fp16
(mixed precision, as Megatron-LM), autograd produces a bf16/fp16 `param.grad`; a post-accumulate-grad hook adds it
into the fp32 `main_grad` and frees it, so micro-batches accumulate in fp32.

The blocks' linear weights, and with gradient-accumulation fusion the LM head's, take their gradient from a
WeightGradStore instead of autograd (gpt3d/parallel/weight_grad.py: a zero-bubble schedule's deferred W step, or
fusion): `accumulate_weight_grad` runs the weight-gradient GEMM. Fused, its output is the main gradient itself
(written by the step's first contribution, accumulated after it; with oneDNN's fp32 GEMM, gpt3d/model/gemm.py, its
result is copied or added), so these weights, nearly all of a GPT's, are neither zero-filled per step nor added
from a temporary; zero_grad marks them "fresh" instead, and a weight still
fresh when the step's reductions start (no gradient reached it) is zeroed then. Unfused, the GEMM's result is added
(copied when fresh). A head tied to the same stage's embedding is the exception: the lookup's gradient still comes
through autograd, after the head's, so that weight is zero-filled as usual and counted ready by autograd's hook.
During the last micro-batch's backward, a bucket is reduced asynchronously as soon as all of its gradients are final,
overlapping the rest of backward. Earlier micro-batches accumulate into the same buffers with no communication.
A CPU group that sums through shared memory (gpt3d/parallel/shared_memory.py) reduces every bucket after backward
instead: its reduction runs synchronously in the calling thread, so launching it mid-backward overlaps nothing and
only adds a meeting point per bucket, where the rank that a busy host slowed down makes the other wait. Measured on
the peers' dp2 step (6 layers, d512, fp32, 2 cores shared with other tenants, 7 alternating runs each): median
1.62 s with a reduction per bucket during backward, 1.48 s with all of them after it.

In fp32, embedding tables (`nn.Embedding` modules whose weight is in a bucket) produce sparse gradients: the rows of
the tokens looked up, added in place into the dense main gradient (autograd's `dense += sparse`). A dense embedding
gradient would zero-fill and then add the whole [vocab, d] table per micro-batch (~10 ms for 8192 x 512 on one core,
against ~1 ms). bf16/fp16 keep the dense gradient: its per-micro-batch rounding (duplicate tokens summed by the
embedding backward, then one bf16 gradient) is the one accumulated in fp32, as above.

Gradients that need another reduction first are kept in "deferred" buckets, reduced after backward: the tied
embedding and its copy on the last pipeline stage (summed over the embedding group) and, under sequence
parallelism, parameters whose gradient is partial per TP rank (summed over the TP group).

With the distributed optimizer (ZeRO-1) each bucket is padded to a multiple of dp and reduce-scattered: rank d
owns shard d of every bucket (its fp32 master values and Adam states), and all-gathers updated parameters back (in
the compute dtype).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from gpt3d.model import gemm
from gpt3d.model.linear import matmul

from . import comm
from .context import Group, ParallelContext


@dataclass
class Bucket:
    params: list[nn.Parameter]
    offsets: list[int]
    numel: int
    padded: int
    param_data: torch.Tensor
    grad_data: torch.Tensor
    deferred: bool
    ready: set = field(default_factory=set)
    work: Optional[object] = None

    def shard(self, tensor: torch.Tensor, dp: Group) -> torch.Tensor:
        size = self.padded // dp.size
        return tensor[dp.rank * size:(dp.rank + 1) * size]


def _fed_by_store(param: nn.Parameter) -> bool:
    """Its weight gradient comes through a WeightGradStore (gpt3d.parallel.tensor.attach_weight_grad_store)."""
    return getattr(param, "weight_grad_by_store", False)


def _fed_by_store_only(param: nn.Parameter) -> bool:
    """Fed by a store and by nothing else. A tied embedding also fed by its lookup through autograd is zeroed by
    zero_grad as usual (not left for the head's GEMM to write: a fine-tuning head, reward or value, leaves the LM head
    unused, and then only the lookup feeds it), and counted ready by autograd's hook: the lookup's gradient comes
    last."""
    return _fed_by_store(param) and not getattr(param, "weight_grad_also_autograd", False)


def _needs_deferral(param: nn.Parameter) -> bool:
    return bool(getattr(param, "embedding_sync", False) or getattr(param, "tp_partial_grad", False))


class GradSynchronizer:
    def __init__(self, ctx: ParallelContext, chunks: list[nn.Module], bucket_mb: float, overlap: bool,
                 distributed_optimizer: bool, dtype: torch.dtype = torch.float32, fuse_weight_grads: bool = True):
        self.ctx = ctx
        self.fuse_weight_grads = fuse_weight_grads
        self._fresh: dict[int, nn.Parameter] = {}  # store-fed weights not written since zero_grad
        self.dp = ctx.dp_group
        self.overlap = overlap and self.dp.size > 1 and self.dp.shm is None  # shared memory: see the docstring
        self.distributed = distributed_optimizer
        self.dtype = dtype
        self.mixed = dtype != torch.float32  # weights in bf16/fp16, fp32 main grads (else params are fp32 masters)
        self.buckets: list[list[Bucket]] = [self._build(chunk, bucket_mb) for chunk in chunks]
        self.sync_enabled = [False] * len(chunks)
        self.weight_sync_enabled = [False] * len(chunks)
        self._bucket_of: dict[int, tuple[int, Bucket]] = {}
        for c, buckets in enumerate(self.buckets):
            for bucket in buckets:
                for p in bucket.params:
                    self._bucket_of[id(p)] = (c, bucket)
                    if self.mixed or (self.overlap and not bucket.deferred):
                        p.register_post_accumulate_grad_hook(self._on_grad_ready)
        if not self.mixed:  # fp32: a lookup's gradient touches only the rows it read; add those in place
            for module in (m for chunk in chunks for m in chunk.modules()):
                if isinstance(module, nn.Embedding) and id(module.weight) in self._bucket_of:
                    module.sparse = True

    def _build(self, chunk: nn.Module, bucket_mb: float) -> list[Bucket]:
        params = [p for p in chunk.parameters() if p.requires_grad]
        regular = [p for p in reversed(params) if not _needs_deferral(p)]
        deferred = [p for p in reversed(params) if _needs_deferral(p)]
        limit = max(1, int(bucket_mb * 1024 * 1024 / 4))
        buckets, current = [], []
        for p in regular:
            current.append(p)
            if sum(q.numel() for q in current) >= limit:
                buckets.append(self._make_bucket(current, False))
                current = []
        if current:
            buckets.append(self._make_bucket(current, False))
        if deferred:
            buckets.append(self._make_bucket(deferred, True))
        return buckets

    def _make_bucket(self, params: list[nn.Parameter], deferred: bool) -> Bucket:
        offsets, total = [], 0
        for p in params:
            offsets.append(total)
            total += p.numel()
        multiple = self.dp.size if self.distributed else 1
        padded = -(-total // multiple) * multiple
        device = params[0].device
        param_data = torch.zeros(padded, dtype=self.dtype, device=device)
        grad_data = torch.zeros(padded, dtype=torch.float32, device=device)
        for p, off in zip(params, offsets):
            n = p.numel()
            param_data[off:off + n].copy_(p.detach().reshape(-1))  # fp32 init rounded once to the compute dtype
            p.data = param_data[off:off + n].view_as(p)
            p.main_grad = grad_data[off:off + n].view_as(p)
            p.grad = None if self.mixed else p.main_grad
        return Bucket(params, offsets, total, padded, param_data, grad_data, deferred)

    # -- backward-time hooks ------------------------------------------------------------------------------------
    def enable_sync(self, chunk: int) -> None:
        """Called before the last micro-batch's backward of `chunk`: from now on, full buckets are reduced."""
        self.sync_enabled[chunk] = True

    def enable_weight_sync(self, chunk: int) -> None:
        """Called before the last deferred weight-gradient pass (W) of `chunk`: weight gradients added from now on
        are final, so a bucket is reduced when its last W is done."""
        self.weight_sync_enabled[chunk] = True

    def _on_grad_ready(self, param: nn.Parameter) -> None:
        """Post-accumulate-grad hook: autograd has finished this parameter's gradient of one backward."""
        if _fed_by_store_only(param):
            return  # autograd's accumulation is empty; the gradient comes through accumulate_weight_grad
        if self.mixed:
            param.main_grad.add_(param.grad)  # bf16/fp16 -> fp32 accumulation
            param.grad = None
        self._mark_ready(param, self.sync_enabled)

    def accumulate_weight_grad(self, param: nn.Parameter, inputs: torch.Tensor, grad_output: torch.Tensor,
                               fp32: bool, deferred: bool) -> None:
        """The WeightGradStore's sink: main_grad += grad_output^T inputs, the GEMM in fp32 where `fp32` or the
        operands are fp32 (then fused: the GEMM writes or accumulates the main gradient); counted ready for the
        bucket's reduction in the last micro-batch's backward (B), or its chunk's last W when `deferred`."""
        go = grad_output.reshape(-1, grad_output.shape[-1]).t()
        x = inputs.reshape(-1, inputs.shape[-1])
        main = param.main_grad
        if self.fuse_weight_grads and (fp32 or go.dtype == torch.float32):
            go, x = go.float(), x.float()  # exact: the GEMM the unfused path runs, without rounding its result
            gemm.mm_into(main, go, x, accumulate=self._fresh.pop(id(param), None) is None)
        else:
            self._add(param, matmul(go, x, fp32))
        if _fed_by_store_only(param):
            self._mark_ready(param, self.weight_sync_enabled if deferred else self.sync_enabled)

    def _add(self, param: nn.Parameter, grad: torch.Tensor) -> None:
        if self._fresh.pop(id(param), None) is not None:
            param.main_grad.copy_(grad)
        else:
            param.main_grad.add_(grad)

    def _mark_ready(self, param: nn.Parameter, enabled: list[bool]) -> None:
        chunk, bucket = self._bucket_of[id(param)]
        if not self.overlap or bucket.deferred or not enabled[chunk]:
            return
        bucket.ready.add(id(param))
        if len(bucket.ready) == len(bucket.params) and bucket.work is None:
            bucket.work = self._launch(bucket, async_op=True)

    def _launch(self, bucket: Bucket, async_op: bool):
        if self.dp.size == 1:
            return None
        nbytes = bucket.grad_data.numel() * bucket.grad_data.element_size()
        if self.distributed:
            self.dp.account("reduce_scatter", nbytes)
            self._shard_out = getattr(self, "_shard_out", {})
            out = torch.empty(bucket.padded // self.dp.size, dtype=torch.float32, device=bucket.grad_data.device)
            self._shard_out[id(bucket)] = out
            return comm.reduce_scatter_into(out, bucket.grad_data, self.dp, async_op=async_op,
                                            divide_by=self.dp.size)
        self.dp.account("all_reduce", nbytes)
        return comm.reduce_in_place(bucket.grad_data, self.dp, async_op=async_op, divide_by=self.dp.size)

    def _complete(self, bucket: Bucket) -> None:
        if bucket.work is not None:
            bucket.work.wait()
        bucket.work = None
        bucket.ready.clear()
        if self.dp.size == 1:
            return
        if self.distributed:  # (the reductions divided by dp: the averages)
            bucket.shard(bucket.grad_data, self.dp).copy_(self._shard_out.pop(id(bucket)))

    def _model_parallel_reductions(self, bucket: Bucket) -> None:
        for p in bucket.params:
            grad = p.main_grad
            if getattr(p, "embedding_sync", False) and self.ctx.embedding_group.size > 1:
                self.ctx.embedding_group.account("all_reduce", grad.numel() * grad.element_size())
                comm.reduce_in_place(grad, self.ctx.embedding_group)
            if getattr(p, "tp_partial_grad", False) and self.ctx.tp_group.size > 1:
                self.ctx.tp_group.account("all_reduce", grad.numel() * grad.element_size())
                comm.reduce_in_place(grad, self.ctx.tp_group)

    def finish(self) -> None:
        """After backward: complete in-flight reductions, then the deferred ones (MP first, then DP)."""
        for param in self._fresh.values():  # no gradient reached it this step (in no bucket launched yet: not ready)
            param.main_grad.zero_()
        self._fresh.clear()
        self._sum_local_tied_copies()
        for buckets in self.buckets:
            for bucket in buckets:
                if bucket.deferred:
                    self._model_parallel_reductions(bucket)
                    bucket.work = self._launch(bucket, async_op=False)
                elif bucket.work is None:  # no overlap, or hooks did not fire (e.g. unused parameters)
                    bucket.work = self._launch(bucket, async_op=False)
                self._complete(bucket)
        self.sync_enabled = [False] * len(self.buckets)
        self.weight_sync_enabled = [False] * len(self.buckets)

    def _sum_local_tied_copies(self) -> None:
        """ZB-V puts the embedding and the tied head copy on the same rank (first and last virtual stage): sum their
        gradients here; the embedding group of that rank then has one member."""
        tied = [p for b in self.all_buckets() for p in b.params if getattr(p, "embedding_sync", False)]
        if len(tied) == 2:
            total = tied[0].main_grad + tied[1].main_grad
            for p in tied:
                p.main_grad.copy_(total)

    def zero_grad(self) -> None:
        """Zero every main gradient but the store-fed weights' (marked fresh: their first gradient is written)."""
        self._fresh = {}
        for bucket in self.all_buckets():
            start = 0
            for p, offset in zip(bucket.params, bucket.offsets):
                if _fed_by_store_only(p):
                    bucket.grad_data[start:offset].zero_()
                    start = offset + p.numel()
                    self._fresh[id(p)] = p
            bucket.grad_data[start:].zero_()  # the rest, padding included

    def all_buckets(self) -> list[Bucket]:
        return [b for buckets in self.buckets for b in buckets]

    def gather_grads(self) -> None:
        """Distributed optimizer, for inspection only (tests, profiling, exports): after `finish`, each rank holds
        just its shard of the reduced gradient; all-gather so every rank sees the full reduced gradients."""
        if not self.distributed or self.dp.size == 1:
            return
        for bucket in self.all_buckets():
            shard = bucket.shard(bucket.grad_data, self.dp).clone()
            comm.gather_into(bucket.grad_data, shard, self.dp)

    def gather_params(self) -> None:
        """Distributed optimizer: every rank updated its shard of each bucket; all-gather the full parameters (in the
        compute dtype: half the bytes of fp32 under bf16/fp16)."""
        if not self.distributed or self.dp.size == 1:
            return
        for bucket in self.all_buckets():
            shard = bucket.shard(bucket.param_data, self.dp).clone()
            self.dp.account("all_gather", bucket.param_data.numel() * bucket.param_data.element_size())
            comm.gather_into(bucket.param_data, shard, self.dp)
