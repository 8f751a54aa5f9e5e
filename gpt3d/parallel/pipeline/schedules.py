"""Pipeline schedules as generators of per-rank action lists (see actions.py). Each generator orders one rank's
compute actions in named phases (warm-up, steady, cool-down); transfers are derived from the placement.

Notation: p stages (pp ranks), this rank is stage s, m micro-batches, v model chunks per rank.
- gpipe: all forwards, then all backwards.
- 1f1b (PipeDream-Flush): p - s - 1 warm-up forwards, then one forward / one backward, then the remaining backwards.
- interleaved (Narayanan et al. 2021): v chunks per rank, virtual stage c*p + s; micro-batches advance in groups
  of p through chunk 0, then chunk 1, ...; needs m divisible by p.
- zbh1 (Qi et al. 2024, "Zero Bubble Pipeline Parallelism", ZB-H1): 1F1B with the backward split into B (input
  gradient, on the critical path) and W (weight gradient). Stage s runs W(i - s) after B(i) in the steady state, so
  at most p micro-batches are ever held (1F1B's peak), and its s postponed W's fill the cool-down bubble.
- zbv (same paper, ZB-V): two chunks per rank in a V: chunk 0 is virtual stage s, chunk 1 is stage 2p-1-s, so the
  first and the last virtual stage live on rank 0. Warm-up fills the V, the steady state runs F0 B0 W0 F1 B1 W1, and
  the cool-down runs the input gradients first and the postponed W's last.
"""
from __future__ import annotations

from typing import Callable

from .actions import B, F, W, Action, Schedule, with_communication

KINDS = ("gpipe", "1f1b", "interleaved", "zbh1", "zbv")
SPLIT_BACKWARD = ("zbh1", "zbv")  # schedules that run W apart from B


class ScheduleError(ValueError):
    """A schedule cannot run a layout; raised before any rank starts."""


def standard_placement(pp: int, vp: int) -> list[list[int]]:
    return [[c * pp + r for c in range(vp)] for r in range(pp)]


def v_placement(pp: int) -> list[list[int]]:
    return [[r, 2 * pp - 1 - r] for r in range(pp)]


def placement_for(kind: str, pp: int, vp: int) -> list[list[int]]:
    """placement[rank][chunk] = virtual stage."""
    return v_placement(pp) if kind == "zbv" else standard_placement(pp, vp)


def chunks_per_rank(kind: str, vp: int) -> int:
    """Model chunks per rank a schedule runs with (zbv: 2 by construction)."""
    return 2 if kind == "zbv" else vp


def check_layout(kind: str, pp: int, vp: int, num_micro: int, n_layers: int | None = None) -> None:
    """One clear error naming the constraint a schedule puts on a layout."""
    if kind not in KINDS:
        raise ScheduleError(f"unknown pipeline schedule {kind!r}; choose one of {', '.join(KINDS)}")
    if pp < 1 or vp < 1 or num_micro < 1:
        raise ScheduleError(f"pp={pp}, vp={vp} and micro-batches={num_micro} must all be >= 1")
    if kind in ("gpipe", "1f1b", "zbh1") and vp != 1:
        raise ScheduleError(f"schedule {kind} runs one model chunk per rank (vp=1), got vp={vp}; "
                            f"use schedule interleaved (or zbv with vp=2) for several chunks per rank")
    if kind == "interleaved":
        if vp < 2 or pp < 2:
            raise ScheduleError(f"schedule interleaved needs pp >= 2 and vp >= 2 model chunks per rank, got pp={pp} "
                                f"vp={vp}; set parallel.vp (or use 1f1b)")
        if num_micro % pp:
            raise ScheduleError(f"schedule interleaved needs the number of micro-batches ({num_micro}) divisible "
                                f"by pp={pp}; change train.global_batch_size or micro_batch_size")
    if kind == "zbv":
        if vp != 2:
            raise ScheduleError(f"schedule zbv runs exactly 2 model chunks per rank (a V), got vp={vp}; set vp=2")
        if pp < 2:
            raise ScheduleError("schedule zbv needs pp >= 2 (its V spans the pipeline ranks twice)")
        if num_micro < pp:
            raise ScheduleError(f"schedule zbv needs at least pp={pp} micro-batches, got {num_micro}; raise "
                                f"train.global_batch_size or lower micro_batch_size")
    if n_layers is not None and n_layers % (pp * vp):
        raise ScheduleError(f"schedule {kind}: model.n_layers={n_layers} cannot be divided into pp*vp={pp * vp} "
                            f"model chunks of equal size; choose pp dividing n_layers / {vp}")


# -- compute orders, one rank at a time ------------------------------------------------------------------------------
def gpipe_order(p: int, s: int, m: int) -> list[Action]:
    forward = [F(0, mb) for mb in range(m)]
    backward = [B(0, mb) for mb in range(m)]
    return forward + backward


def one_f_one_b_order(p: int, s: int, m: int) -> list[Action]:
    warmup = min(p - s - 1, m)
    order = [F(0, mb) for mb in range(warmup)]
    for i in range(m - warmup):  # steady
        order += [F(0, warmup + i), B(0, i)]
    order += [B(0, mb) for mb in range(m - warmup, m)]  # cool-down
    return order


def interleaved_order(p: int, s: int, m: int, v: int) -> list[Action]:
    forwards = [F(c, mb) for g in range(m // p) for c in range(v) for mb in range(g * p, (g + 1) * p)]
    backwards = [B(c, mb) for g in range(m // p) for c in reversed(range(v)) for mb in range(g * p, (g + 1) * p)]
    total = m * v
    warmup = min((p - s - 1) * 2 + (v - 1) * p, total)
    order = forwards[:warmup]
    for i in range(total - warmup):  # steady
        order += [forwards[warmup + i], backwards[i]]
    return order + backwards[total - warmup:]  # cool-down


def zbh1_order(p: int, s: int, m: int) -> list[Action]:
    warmup = min(p - s - 1, m)
    order = [F(0, mb) for mb in range(warmup)]
    next_w = 0
    for i in range(m - warmup):  # steady: F, B, and the W of s micro-batches ago
        order += [F(0, warmup + i), B(0, i)]
        if i - s >= 0:
            order.append(W(0, next_w))
            next_w += 1
    for mb in range(m - warmup, m):  # cool-down: each B followed by one postponed W
        order += [B(0, mb), W(0, next_w)]
        next_w += 1
    return order + [W(0, mb) for mb in range(next_w, m)]


def zbv_order(p: int, s: int, m: int) -> list[Action]:
    """Chunk 0 = virtual stage s (down the V), chunk 1 = stage 2p-1-s (back up). Generated for
    n = max(m, 2p - 1) micro-batches, then the actions of micro-batches >= m are dropped."""
    n = max(m, 2 * p - 1)
    order: list[Action] = []
    f = [0, 0]  # next forward per chunk
    b = [0, 0]  # next input-gradient backward per chunk
    w = [0, 0]  # next weight-gradient pass per chunk

    def fwd(c):
        order.append(F(c, f[c]))
        f[c] += 1

    def bwd(c):
        order.append(B(c, b[c]))
        b[c] += 1

    def wgt(c):
        order.append(W(c, w[c]))
        w[c] += 1

    for _ in range(2 * (p - s) - 1):  # warm-up 1: fill the way down
        fwd(0)
    for _ in range(s):  # warm-up 2: the way back up starts
        fwd(1)
        fwd(0)
    for _ in range(p - s):  # warm-up 3: the first backwards of the top of the V
        fwd(1)
        bwd(1)
        wgt(1)
    while f[1] < f[0] or f[0] < n:  # steady
        if f[0] < n:
            fwd(0)
        bwd(0)
        wgt(0)
        fwd(1)
        bwd(1)
        wgt(1)
    for _ in range(s):  # cool-down 1: input gradients only
        bwd(0)
        bwd(1)
    for _ in range(p - s):  # cool-down 2
        bwd(0)
        wgt(0)
    while w[1] < b[1]:  # the postponed weight gradients
        wgt(1)
    while w[0] < b[0]:
        wgt(0)
    assert f == b == w == [n, n], (f, b, w)
    return [a for a in order if a.mb < m]


def build_schedule(kind: str, pp: int, num_micro: int, vp: int = 1) -> Schedule:
    """Every rank's action list for `kind` (vp is ignored by zbv, which always runs 2 chunks per rank)."""
    vp = chunks_per_rank(kind, vp)
    check_layout(kind, pp, vp, num_micro)
    p, m = pp, num_micro
    orders: dict[str, Callable[[int], list[Action]]] = {
        "gpipe": lambda s: gpipe_order(p, s, m),
        "1f1b": lambda s: one_f_one_b_order(p, s, m),
        "interleaved": lambda s: interleaved_order(p, s, m, vp),
        "zbh1": lambda s: zbh1_order(p, s, m),
        "zbv": lambda s: zbv_order(p, s, m),
    }
    compute = [orders[kind](s) for s in range(p)]
    return with_communication(kind, p, vp, m, placement_for(kind, p, vp), compute,
                              split_backward=kind in SPLIT_BACKWARD)


def forward_only(pp: int, num_micro: int, vp: int = 1, kind: str = "1f1b") -> Schedule:
    """Evaluation: every micro-batch through every virtual stage, forwards only."""
    vp = chunks_per_rank(kind, vp)
    placement = placement_for(kind, pp, vp)
    compute = []
    for r in range(pp):
        stages = sorted(placement[r])
        compute.append([F(placement[r].index(st), mb) for mb in range(num_micro) for st in stages])
    return with_communication("forward-only", pp, vp, num_micro, placement, compute, split_backward=False,
                              backward=False)
