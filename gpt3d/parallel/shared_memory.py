"""Collectives through shared memory for a CPU group whose ranks share one host.

gloo moves CPU tensors over loopback TCP: a 2 MB all-reduce between two processes costs ~4 ms of kernel copies on the
2-core CI machine, with the cores also busy computing. When every rank of a group can map the same file in
/dev/shm, gpt3d sums through it instead: each rank copies its tensor into its own slot, a barrier on the buffer's
header (gpt3d_C::shm_barrier, csrc/shared_memory/: release/acquire order, spin then yield then sleep) says every slot
is written, and each rank reads the slots. Every rank adds the slots in the same order (slot 0 first), so the
results are bit-identical across ranks, as a collective's must be.

Two slot sets alternate between rounds. A rank can start writing round k+2 only after the barrier of round k+1,
which every rank reaches only after it finished reading round k: one barrier per round is enough.

The buffer is set up collectively when the group is created and only if every rank sees the bytes rank 0 wrote
(ranks on different hosts or in containers with separate /dev/shm fall back to gloo, as does a build without the
extension). The file is unlinked as soon as every rank mapped it, so nothing stays in /dev/shm once the group exists,
whatever happens to the ranks later.
"""
from __future__ import annotations

import os
import uuid
from typing import Optional

import torch
import torch.distributed as dist

SHM_DIR = "/dev/shm"
SLOT_BYTES = 4 << 20  # per rank and round: large enough that the barrier is a small part of a round
HEADER_LINE = 8  # int64s per rank in the header (one cache line): [arrived round, pid, unused...]
_REDUCERS = {dist.ReduceOp.SUM: torch.add, dist.ReduceOp.MAX: torch.maximum, dist.ReduceOp.MIN: torch.minimum}


def _header_bytes(size: int) -> int:
    return -(-size * HEADER_LINE * 8 // 4096) * 4096  # the slots start page-aligned


class SharedMemoryCollectives:
    """All-reduce, all-gather and reduce-scatter of contiguous CPU tensors among the ranks of one process group."""

    def __init__(self, buffer: torch.Tensor, pg, rank: int, size: int, slot_bytes: int, timeout_s: float):
        head = _header_bytes(size)
        self.header = buffer[:size * HEADER_LINE * 8].view(torch.int64)
        self.slots = buffer[head:].view(2, size, slot_bytes)  # [round parity, rank, bytes]
        self.pg, self.rank, self.size, self.slot_bytes, self.timeout_s = pg, rank, size, slot_bytes, timeout_s
        self._round = 0

    @staticmethod
    def supported(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> bool:
        return tensor.device.type == "cpu" and op in _REDUCERS

    @classmethod
    def create(cls, pg, rank: int, size: int, timeout_s: float,
               slot_bytes: int = SLOT_BYTES) -> Optional["SharedMemoryCollectives"]:
        """Collective over `pg`: map one shared buffer, or return None on every rank if any rank cannot (no
        /dev/shm, another host, a separate /dev/shm, or the extension with the barrier is not built)."""
        from gpt3d.kernels._ext import has_op
        nbytes = _header_bytes(size) + 2 * size * slot_bytes
        name = torch.zeros(64, dtype=torch.uint8)
        if rank == 0:
            path = os.path.join(SHM_DIR, f"gpt3d-{uuid.uuid4().hex}")
            name[:len(path)] = torch.frombuffer(bytearray(path.encode()), dtype=torch.uint8)
        dist.broadcast(name, group=pg, group_src=0)
        path = bytes(name[name > 0].tolist()).decode()
        token = uuid.UUID(path.rsplit("-", 1)[1]).int % (1 << 62)  # rank 0 writes it; the others must read it
        buffer, seen, built = None, False, has_op("shm_barrier")
        try:
            if rank == 0 and built and os.path.isdir(SHM_DIR):
                buffer = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)
                buffer[:8].view(torch.int64).fill_(token)
            dist.barrier(group=pg)
            if rank != 0 and built and os.path.exists(path):
                buffer = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)
            seen = buffer is not None and int(buffer[:8].view(torch.int64).item()) == token
        except (OSError, RuntimeError):
            seen = False
        ok = torch.tensor([int(seen)], dtype=torch.int64)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=pg)  # also: every rank has mapped (or failed) before unlink
        if rank == 0 and os.path.exists(path):
            os.unlink(path)
        if not ok.item():
            return None
        shm = cls(buffer, pg, rank, size, slot_bytes, timeout_s)
        # Every rank has read the token (the all-reduce above) before rank 0 clears it with its header line; the
        # barrier makes every line [round 0, pid] before any round starts.
        shm.header.view(size, HEADER_LINE)[rank].copy_(torch.tensor([0, os.getpid()] + [0] * (HEADER_LINE - 2)))
        dist.barrier(group=pg)
        return shm

    def _next_round(self) -> torch.Tensor:
        """The slots of the next round (alternating sets); its barrier is `_arrive`."""
        self._round += 1
        return self.slots[self._round % 2]

    def _arrive(self) -> None:
        torch.ops.gpt3d_C.shm_barrier(self.header, self.rank, self._round, self.timeout_s)

    def _chunk_elems(self, x: torch.Tensor, parts: int = 1) -> int:
        return self.slot_bytes // (x.element_size() * parts)

    def _reduce(self, reduce, mine: torch.Tensor, views: list[torch.Tensor], out: torch.Tensor) -> None:
        """out = views[0] (op) views[1] (op) ... in rank order, identical on every rank. With two ranks, this rank's
        own values (`mine`, equal to its view) are combined with the peer's: a op b == b op a exactly, and the local
        copy is likelier in cache."""
        if self.size == 2:
            reduce(mine, views[1 - self.rank], out=out)
            return
        reduce(views[0], views[1], out=out)
        for view in views[2:]:
            reduce(out, view, out=out)

    def _copy_in(self, slot: torch.Tensor, values: torch.Tensor, divide_by: int) -> torch.Tensor:
        """Write this rank's values into its slot, divided by `divide_by` on the way (a gradient average with no
        pass of its own); returns the values the reduction combines for this rank. For 2 or 4 ranks the sum of
        halves (quarters) is the sum halved (quartered) exactly, barring subnormals: scaling by a power of two is
        exact in binary floating point."""
        if divide_by == 1:
            slot.copy_(values)
            return values
        torch.div(values, divide_by, out=slot)
        return slot

    def all_reduce(self, x: torch.Tensor, op=dist.ReduceOp.SUM, divide_by: int = 1) -> torch.Tensor:
        """x = the reduction over ranks of x / `divide_by` (each rank's part divided as it is copied in)."""
        reduce = _REDUCERS[op]
        flat = x.view(-1)
        step = self._chunk_elems(x)
        for start in range(0, flat.numel(), step):
            piece = flat[start:start + step]
            nbytes = piece.numel() * x.element_size()
            slots = self._next_round()
            views = [slots[r, :nbytes].view(x.dtype) for r in range(self.size)]
            mine = self._copy_in(views[self.rank], piece, divide_by)
            self._arrive()
            self._reduce(reduce, mine, views, piece)
        return x

    def all_gather_into_tensor(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """out = cat(x of rank 0, ..., x of rank size-1) (flat)."""
        flat, out_flat = x.view(-1), out.view(-1)
        total = flat.numel()
        step = self._chunk_elems(x)
        for start in range(0, total, step):
            n = min(step, total - start)
            slots = self._next_round()
            views = [slots[r, :n * x.element_size()].view(x.dtype) for r in range(self.size)]
            views[self.rank].copy_(flat[start:start + n])
            self._arrive()
            for r, view in enumerate(views):
                out_flat[r * total + start:r * total + start + n].copy_(view)
        return out

    def reduce_scatter_tensor(self, out: torch.Tensor, x: torch.Tensor, op=dist.ReduceOp.SUM,
                              divide_by: int = 1) -> torch.Tensor:
        """out = the reduction over ranks of their x's part `rank` (x flat, `size` equal parts) / `divide_by`."""
        reduce = _REDUCERS[op]
        parts, out_flat = x.view(self.size, -1), out.view(-1)
        part = out_flat.numel()
        step = self._chunk_elems(x, self.size)  # a round holds one piece of every part
        for start in range(0, part, step):
            n = min(step, part - start)
            slots = self._next_round()
            nbytes = self.size * n * x.element_size()
            views = [slots[r, :nbytes].view(x.dtype).view(self.size, n) for r in range(self.size)]
            mine = self._copy_in(views[self.rank], parts[:, start:start + n], divide_by)[self.rank]
            self._arrive()
            self._reduce(reduce, mine, [v[self.rank] for v in views], out_flat[start:start + n])
        return out
