"""Point-to-point messages of pipelined decoding, between this rank and the same tensor-parallel rank of the next /
previous pipeline stage. Per micro-batch and step: a flag (is the micro-batch still running), then its hidden states,
forward along the pipeline; the sampled tokens go from the last stage back to the first. Sends are asynchronous (kept
until `finish`), receives block; every pair of ranks sees its messages in one deterministic order, so the stages
overlap work on different micro-batches without deadlock."""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from gpt3d.parallel.context import Group, ParallelContext


class StageLink:
    def __init__(self, ctx: ParallelContext):
        group = ctx.pp_group
        self.group = group
        self.device = ctx.device
        size, me = group.size, group.rank
        self.next = group.global_rank(me + 1) if me + 1 < size else None
        self.prev = group.global_rank(me - 1) if me > 0 else None
        self.first = group.global_rank(0)
        self.last = group.global_rank(size - 1)
        self._pending: list = []

    def _send(self, tensor: torch.Tensor, dst: int, op: str) -> None:
        tensor = tensor.contiguous()
        self.group.account(op, tensor.numel() * tensor.element_size())
        self._pending.append((dist.isend(tensor, dst), tensor))

    def _recv(self, shape, dtype: torch.dtype, src: int) -> torch.Tensor:
        out = torch.empty(shape, dtype=dtype, device=self.device)
        dist.recv(out, src)
        return out

    def send_flag(self, running: bool) -> None:
        self._send(torch.tensor([int(running)], dtype=torch.long, device=self.device), self.next, "decode_flag")

    def recv_flag(self) -> bool:
        return bool(self._recv((1,), torch.long, self.prev).item())

    def send_hidden(self, hidden: torch.Tensor) -> None:
        self._send(hidden, self.next, "decode_hidden")

    def recv_hidden(self, shape, dtype: torch.dtype) -> torch.Tensor:
        return self._recv(shape, dtype, self.prev)

    def send_tokens(self, tokens: torch.Tensor) -> None:
        self._send(tokens.to(torch.long), self.first, "decode_tokens")

    def recv_tokens(self, count: int) -> torch.Tensor:
        return self._recv((count,), torch.long, self.last)

    def finish(self) -> None:
        """Wait for every send of this call (their buffers stay alive until then)."""
        for work, _ in self._pending:
            work.wait()
        self._pending.clear()


def from_last_stage(ctx: ParallelContext, obj, replica: Optional[Group] = None):
    """`obj` as the first rank of the last pipeline stage holds it, on every rank (one object broadcast; nothing to do
    on one rank). Results of generation and scoring are computed there. With `replica` (alignment's rollouts, one per
    data-parallel index), the broadcast stays inside this rank's model replica."""
    if (ctx.layout.world_size if replica is None else replica.size) == 1:
        return obj
    L = ctx.layout
    src = L.rank_of(0, 0 if replica is None else ctx.dp_rank, L.pp - 1)
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src, group=None if replica is None else replica.pg)
    return box[0]
