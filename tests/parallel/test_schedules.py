"""Pipeline schedules: GPipe, 1F1B, interleaved 1F1B, ZB-H1 and ZB-V give identical gradients, and each runs exactly
its order of forwards and backwards (and split weight-gradient passes) on every stage.

The order is read from the StageRunner events (kind, chunk, micro-batch, start, end) of real spawned runs, for
pp in {2, 4} and m in {pp, 2*pp, 3} (3 is odd: more micro-batches than stages for pp=2, fewer for pp=4; the interleaved
schedule needs m divisible by pp, so it runs pp and 2*pp, and ZB-V needs m >= pp). The expected orders of GPipe, 1F1B
and interleaved are written out here from the schedules' definitions, independently of
gpt3d/parallel/pipeline/schedules.py; ZB-H1 and ZB-V are checked by the properties that define them.
"""
from __future__ import annotations

import pytest
import torch

from gpt3d.parallel.pipeline.schedules import build_schedule

from .harness import job, layout_overrides, register_job, results

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zbh1", "zbv")
PP_DEGREES = (2, 4)
ODD_M = 3


def micro_counts(pp: int, schedule: str) -> list[int]:
    # The first step (2*pp micro-batches, the same batch for every schedule) gives the gradients compared across them.
    odd = schedule != "interleaved" and (schedule != "zbv" or ODD_M >= pp)
    return [2 * pp, pp] + ([ODD_M] if odd else [])


def overrides(pp: int, schedule: str) -> list[str]:
    vp = 2 if schedule == "interleaved" else 1  # zbv: 2 chunks per rank by construction
    out = layout_overrides(1, pp, 1, vp) + [f"model.n_layers={2 * pp}"]  # pp * 2 chunks divides the layers
    return out + [f"parallel.schedule={schedule}"]


def key(pp: int, schedule: str) -> str:
    return f"schedule {schedule} pp={pp}"


for _pp in PP_DEGREES:
    for _schedule in SCHEDULES:
        register_job(_pp, key(_pp, _schedule),
                     job(overrides(_pp, _schedule), micro_counts=micro_counts(_pp, _schedule)))


def events_of(pp: int, schedule: str, step: int) -> dict[int, list[tuple]]:
    """pp_rank -> that stage's events of one step, in execution order."""
    per_rank = results(pp, key(pp, schedule))
    return {r["coords"]["pp"]: r["steps"][step]["events"] for r in per_rank}


def cases(schedule: str):
    for pp in PP_DEGREES:
        for step, m in enumerate(micro_counts(pp, schedule)):
            yield pytest.param(pp, step, m, id=f"pp{pp}-m{m}")


# -- expected orders --------------------------------------------------------------------------------------------------
def expected_gpipe(p: int, s: int, m: int) -> list[tuple[str, int, int]]:
    return [("F", 0, mb) for mb in range(m)] + [("B", 0, mb) for mb in range(m)]


def expected_1f1b(p: int, s: int, m: int) -> list[tuple[str, int, int]]:
    """Warm-up: min(p - s - 1, m) forwards; steady: forward mb w + i then backward mb i; cool-down: the rest."""
    w = min(p - s - 1, m)
    order = [("F", 0, mb) for mb in range(w)]
    for i in range(m - w):
        order += [("F", 0, w + i), ("B", 0, i)]
    return order + [("B", 0, mb) for mb in range(m - w, m)]


def interleaved_forward_order(p: int, v: int, m: int) -> list[tuple[int, int]]:
    """Micro-batches advance in groups of p: group g runs through chunk 0, then chunk 1, ..."""
    return [(c, mb) for g in range(m // p) for c in range(v) for mb in range(g * p, (g + 1) * p)]


def interleaved_backward_order(p: int, v: int, m: int) -> list[tuple[int, int]]:
    return [(c, mb) for g in range(m // p) for c in reversed(range(v)) for mb in range(g * p, (g + 1) * p)]


def expected_interleaved(p: int, s: int, m: int, v: int = 2) -> list[tuple[str, int, int]]:
    total = m * v
    w = min((p - s - 1) * 2 + (v - 1) * p, total)
    fwd = [("F", c, mb) for c, mb in interleaved_forward_order(p, v, m)]
    bwd = [("B", c, mb) for c, mb in interleaved_backward_order(p, v, m)]
    order = fwd[:w]
    for i in range(total - w):
        order += [fwd[w + i], bwd[i]]
    return order + bwd[total - w:]


EXPECTED = {"gpipe": expected_gpipe, "1f1b": expected_1f1b, "interleaved": expected_interleaved}


def kinds(events) -> list[tuple[str, int, int]]:
    return [(kind, chunk, mb) for kind, chunk, mb, _, _ in events]


def max_in_flight(events, release: str = "B") -> int:
    """Micro-batch activations held at the peak: from F until B (or W when the backward is split)."""
    live, peak = 0, 0
    for kind, *_ in events:
        live += 1 if kind == "F" else -1 if kind == release else 0
        peak = max(peak, live)
    return peak


# -- tests ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pp", PP_DEGREES)
def test_schedules_give_identical_gradients(pp):
    grads = {s: results(pp, key(pp, s))[0]["grads"] for s in SCHEDULES}
    reference = grads["gpipe"]
    for schedule in SCHEDULES[1:]:
        assert sorted(grads[schedule]) == sorted(reference)
        for name, g in reference.items():
            # 1F1B runs the same micro-batch computations as GPipe in another order: bit-identical sums per parameter
            # only up to the order of the m accumulations, hence a rounding-level tolerance.
            torch.testing.assert_close(grads[schedule][name], g, atol=1e-6, rtol=1e-5,
                                       msg=lambda msg: f"{schedule} {name}: {msg}")


@pytest.mark.parametrize("pp,step,m", list(cases("gpipe")))
def test_gpipe_order(pp, step, m):
    for s, events in events_of(pp, "gpipe", step).items():
        assert kinds(events) == expected_gpipe(pp, s, m), f"stage {s}"


@pytest.mark.parametrize("pp,step,m", list(cases("1f1b")))
def test_one_f_one_b_order(pp, step, m):
    for s, events in events_of(pp, "1f1b", step).items():
        order = kinds(events)
        assert order == expected_1f1b(pp, s, m), f"stage {s}"
        # The properties the order encodes, stated directly:
        first_backward = next(i for i, e in enumerate(order) if e[0] == "B")
        warmup = min(pp - s - 1, m)
        assert first_backward == min(warmup + 1, m), f"stage {s}: {warmup} warm-up forwards, then F B"
        steady = order[warmup:warmup + 2 * (m - warmup)]
        assert [e[0] for e in steady] == ["F", "B"] * (m - warmup), f"stage {s}: steady state alternates F, B"
        assert [e[2] for e in order if e[0] == "B"] == [e[2] for e in order if e[0] == "F"] == list(range(m))
        assert max_in_flight(events) <= min(pp - s, m), f"stage {s}: more than p - s micro-batches in flight"


@pytest.mark.parametrize("pp,step,m", list(cases("interleaved")))
def test_interleaved_order(pp, step, m):
    v = 2
    for s, events in events_of(pp, "interleaved", step).items():
        order = kinds(events)
        assert order == expected_interleaved(pp, s, m, v), f"stage {s}"
        total = m * v
        warmup = min((pp - s - 1) * 2 + (v - 1) * pp, total)
        first_backward = next(i for i, e in enumerate(order) if e[0] == "B")
        assert first_backward == min(warmup + 1, total), f"stage {s}: warm-up forwards"
        assert [(c, mb) for k, c, mb in order if k == "F"] == interleaved_forward_order(pp, v, m)
        assert [(c, mb) for k, c, mb in order if k == "B"] == interleaved_backward_order(pp, v, m)
        assert max_in_flight(events) <= min(warmup + 1, total)


@pytest.mark.parametrize("pp,step,m", list(cases("zbh1")))
def test_zbh1_order(pp, step, m):
    """ZB-H1 is 1F1B with the weight gradients split off: the F/B order is 1F1B's; stage s runs W(i - s) after the
    steady-state B(i), so at most p micro-batches are held (1F1B's peak), and the W's left at the end fill the
    cool-down."""
    for s, events in events_of(pp, "zbh1", step).items():
        order = kinds(events)
        assert [e for e in order if e[0] != "W"] == expected_1f1b(pp, s, m), f"stage {s}"
        assert [e[2] for e in order if e[0] == "W"] == list(range(m)), f"stage {s}: W in micro-batch order"
        for mb in range(m):
            assert order.index(("W", 0, mb)) > order.index(("B", 0, mb)), f"stage {s}: W({mb}) before its B"
        assert max_in_flight(events, release="W") <= min(pp, m), f"stage {s}: more than p micro-batches held"
        assert order[-1][0] == "W", f"stage {s}: the postponed weight gradients close the step"


@pytest.mark.parametrize("pp,step,m", list(cases("zbv")))
def test_zbv_order(pp, step, m):
    """ZB-V: two chunks per rank in a V (chunk 0 = stage s, chunk 1 = stage 2p-1-s), each chunk's F, B and W in
    micro-batch order, every W after its B, at most p stage-sized activations held; the runner executed exactly the
    generated list."""
    for s, events in events_of(pp, "zbv", step).items():
        order = kinds(events)
        assert order == [(a.kind, a.chunk, a.mb) for a in build_schedule("zbv", pp, m, 2).compute(s)], f"stage {s}"
        for chunk in (0, 1):
            for kind in "FBW":
                assert [e[2] for e in order if e[:2] == (kind, chunk)] == list(range(m)), f"stage {s} {kind}{chunk}"
            for mb in range(m):
                assert order.index(("W", chunk, mb)) > order.index(("B", chunk, mb)) > order.index(("F", chunk, mb))
        held = 0
        peak = 0
        for kind, *_ in order:  # each chunk holds half a stage's layers
            held += 1 if kind == "F" else -1 if kind == "W" else 0
            peak = max(peak, held)
        assert peak <= 2 * pp, f"stage {s}: more than p stage-sized activations held"


def stage_of(schedule: str, pp: int, s: int, chunk: int) -> int:
    if schedule == "zbv":
        return s if chunk == 0 else 2 * pp - 1 - s
    return chunk * pp + s


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("pp", PP_DEGREES)
def test_dependencies_across_stages(pp, schedule):
    """Causality from the shared monotonic clock: the forward of (virtual stage k, mb) starts after that of stage k-1
    ended; the backward of stage k starts after that of stage k+1 ended; a W after its own B."""
    v = 2 if schedule in ("interleaved", "zbv") else 1
    for step in range(len(micro_counts(pp, schedule))):
        per_stage = events_of(pp, schedule, step)
        span = {}
        for s, events in per_stage.items():
            for kind, chunk, mb, start, end in events:
                span[(kind, stage_of(schedule, pp, s, chunk), mb)] = (start, end)
        for (kind, virtual, mb), (start, _) in span.items():
            if kind == "W":
                assert start >= span[("B", virtual, mb)][1]
                continue
            before = virtual - 1 if kind == "F" else virtual + 1
            if 0 <= before < pp * v:
                assert start >= span[(kind, before, mb)][1], f"{kind} of mb {mb} on virtual stage {virtual}"
            if kind == "B" and virtual == pp * v - 1:
                assert start >= span[("F", virtual, mb)][1]
