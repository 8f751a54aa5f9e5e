"""Shared-memory collectives (gpt3d/parallel/shared_memory.py) against gloo's own, on N spawned ranks.

gloo is the independent reference: for every op, dtype and size (below, at and above the per-round slot, so chunking
and both slot sets are exercised) the shared-memory result equals gloo's within the reordering of a float sum, and is
bit-identical on every rank. With two ranks the sum has one addition, so the results equal gloo's exactly. A group
whose ranks cannot all map the buffer falls back to gloo on every rank; a peer that exits is reported within seconds,
one that stays silent after the group's timeout.
"""
from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

from gpt3d.kernels._ext import has_op
from gpt3d.launch.spawn import spawn
from gpt3d.parallel import comm, shared_memory
from gpt3d.parallel.context import Group
from gpt3d.parallel.shared_memory import SharedMemoryCollectives

pytestmark = pytest.mark.skipif(not has_op("shm_barrier"), reason="needs the C++ extension (shm_barrier)")

SLOT = 4096  # bytes per rank and round: small, so a few KB already take several rounds
SIZES = [1, 5, SLOT // 4, SLOT // 4 * 3 + 7]  # elements (fp32 slot = 1024): one round, partial, exact, several
DTYPES = [torch.float32, torch.bfloat16, torch.float64, torch.int64]


def _data(rank: int, n: int, dtype: torch.dtype, salt: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * rank + salt)
    if dtype == torch.int64:
        return torch.randint(-1000, 1000, (n,), generator=g)
    return torch.randn(n, generator=g, dtype=torch.float64).to(dtype)


def _join(rank: int, world: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)  # MASTER_ADDR/PORT: set by spawn


def _gathered(x: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return parts


def _collectives_rank(rank: int, world: int) -> dict:
    _join(rank, world)
    shm = SharedMemoryCollectives.create(dist.group.WORLD, rank, world, 60.0, slot_bytes=SLOT)
    assert shm is not None
    group = Group("world", list(range(world)), rank, dist.group.WORLD, shm=shm)
    plain = Group("world", list(range(world)), rank, dist.group.WORLD)
    checked = 0
    for salt, (n, dtype) in enumerate((n, d) for n in SIZES for d in DTYPES):
        for op in (dist.ReduceOp.SUM, dist.ReduceOp.MAX, dist.ReduceOp.MIN):
            x = _data(rank, n, dtype, salt)
            ref = x.clone()
            dist.all_reduce(ref, op=op)
            got = x.clone()
            comm.reduce_in_place(got, group, op)
            exact = op != dist.ReduceOp.SUM or world == 2 or dtype == torch.int64
            if exact:
                assert torch.equal(got, ref), (n, dtype, op)
            else:  # a different summation order than gloo's: round-off of a few ulps of the terms
                torch.testing.assert_close(got, ref, rtol=0, atol=world * ref.abs().max().item() * 2 ** -7
                                           if dtype == torch.bfloat16 else 1e-5)
            assert all(torch.equal(got, other) for other in _gathered(got)), "ranks disagree"
            checked += 1
        # reduce-scatter: x holds `world` parts of n elements
        x = _data(rank, world * n, dtype, salt + 500)
        ref = torch.empty(n, dtype=dtype)
        dist.reduce_scatter_tensor(ref, x)
        got = torch.empty(n, dtype=dtype)
        comm.reduce_scatter_into(got, x, group)
        if world == 2 or dtype == torch.int64:
            assert torch.equal(got, ref), (n, dtype)
        else:
            torch.testing.assert_close(got, ref, rtol=0, atol=world * ref.abs().max().item() * 2 ** -7
                                       if dtype == torch.bfloat16 else 1e-5)
        # all-gather
        x = _data(rank, n, dtype, salt + 900)
        got = torch.empty(world * n, dtype=dtype)
        comm.gather_into(got, x, group)
        assert torch.equal(got, torch.cat(_gathered(x))), (n, dtype)
        for g in (group, plain):  # comm's own gloo path too (a group without shared memory)
            assert all(torch.equal(a, b) for a, b in zip(comm.gather_list(x.view(-1, 1), g), _gathered(x.view(-1, 1))))
        comm.gather_into(got, x, plain)
        assert torch.equal(got, torch.cat(_gathered(x)))
        x = _data(rank, world * n, dtype, salt + 500)
        got = torch.empty(n, dtype=dtype)
        comm.reduce_scatter_into(got, x.view(world, n), plain)
        assert torch.equal(got, ref)
        checked += 2
        if dtype.is_floating_point:  # gradient averages: the sum divided by the group size, in one pass
            x = _data(rank, world * n, dtype, salt + 700)
            ref = x.clone()
            dist.all_reduce(ref)
            ref.div_(world)
            ref_part = ref.view(world, n)[rank]
            for g in (group, plain):
                for async_op in (False, True):
                    got = x.clone()
                    handle = comm.reduce_in_place(got, g, async_op=async_op, divide_by=world)
                    part = torch.empty(n, dtype=dtype)
                    handle_rs = comm.reduce_scatter_into(part, x, g, async_op=async_op, divide_by=world)
                    if async_op:
                        handle.wait()
                        handle_rs.wait()
                        handle.wait()  # a second wait divides nothing more
                    if g is plain or world == 2:
                        assert torch.equal(got, ref) and torch.equal(part, ref_part), (n, dtype, async_op)
                    else:
                        tol = world * ref.abs().max().item() * 2 ** -7 if dtype == torch.bfloat16 else 1e-5
                        torch.testing.assert_close(got, ref, rtol=0, atol=tol)
                        torch.testing.assert_close(part, ref_part, rtol=0, atol=tol)
            checked += 1
    return {"checked": checked, "rounds": shm._round}


@pytest.mark.parametrize("world", [2, 3, 4])
def test_collectives_equal_gloo(world):
    results = spawn(_collectives_rank, world, collect=True)
    floating = sum(d.is_floating_point for d in DTYPES)
    assert {r["checked"] for r in results} == {len(SIZES) * (len(DTYPES) * 5 + floating)}
    assert len({r["rounds"] for r in results}) == 1


def _fallback_rank(rank: int, world: int) -> bool:
    _join(rank, world)
    if rank == 0:  # the rank that creates the buffer has no /dev/shm: the others find no file at its path
        shared_memory.SHM_DIR = "/nonexistent-gpt3d-shm"
    shm = SharedMemoryCollectives.create(dist.group.WORLD, rank, world, 60.0, slot_bytes=SLOT)
    return shm is None


def test_without_a_shared_buffer_every_rank_falls_back_to_gloo():
    assert all(spawn(_fallback_rank, 2, collect=True))


def _left_in_shm_rank(rank: int, world: int) -> list[str]:
    _join(rank, world)
    before = set(os.listdir(shared_memory.SHM_DIR))
    shm = SharedMemoryCollectives.create(dist.group.WORLD, rank, world, 60.0, slot_bytes=SLOT)
    assert shm is not None
    dist.barrier()
    return sorted(f for f in set(os.listdir(shared_memory.SHM_DIR)) - before if f.startswith("gpt3d-"))


def test_the_buffer_leaves_no_file_in_dev_shm():
    # (another test run may create its own files meanwhile; ours would be among the new ones)
    results = spawn(_left_in_shm_rank, 2, collect=True)
    assert results[0] == [] and results[1] == []


def _silent_peer_rank(rank: int, world: int, exits: bool) -> None:
    _join(rank, world)
    shm = SharedMemoryCollectives.create(dist.group.WORLD, rank, world, 3.0, slot_bytes=SLOT)
    group = Group("world", list(range(world)), rank, dist.group.WORLD, shm=shm)
    comm.reduce_in_place(torch.ones(8), group)
    if rank == 1:
        if exits:
            os._exit(0)
        time.sleep(8)  # past rank 0's 3 s timeout
        os._exit(0)
    start = time.monotonic()
    try:
        comm.reduce_in_place(torch.ones(8), group)
    except RuntimeError as exc:
        message = str(exc).splitlines()[0]
        os.write(2, f"rank 0 after {time.monotonic() - start:.1f} s: {message}\n".encode())
        os._exit(0 if ("exited" in message) == exits else 3)
    os._exit(4)


@pytest.mark.parametrize("exits", [True, False], ids=["peer exits", "peer silent"])
def test_a_missing_peer_is_an_error_not_a_hang(exits, capfd):
    spawn(_silent_peer_rank, 2, exits)  # rank 0 exits 0 only if it got the expected error
    err = capfd.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("rank 0 after")]
    assert line, err[-2000:]
    assert float(line[0].split()[3]) < (2.0 if exits else 6.0), line[0]
    if exits:
        assert "rank 1 of the group (pid" in line[0] and "exited while rank 0 waited" in line[0], line[0]
    else:
        assert "Timed out after" in line[0] and "parallel.comm_timeout_s=3" in line[0], line[0]
