"""Execute every rank's action list with per-action costs: prove it deadlock-free and time it.

Semantics are the runner's: a compute action runs when the rank reaches it; a batch of adjacent transfers is posted
at once; its sends never block the sender (they complete in the background and are waited at the end of the step), its
receives block until the matching send has been posted, then pay `comm` each. So the only waits are real data
dependencies, and a schedule deadlocks exactly when its orders contradict each other across ranks.
Matching is in order per (sender, receiver, kind): the k-th SEND_F from a to b meets the k-th RECV_F on b from a, and
the simulator checks that both name the same micro-batch and adjacent virtual stages, so no message is ever taken for
another. It also checks each compute action's local dependencies (B after F, W after B, a stage's input produced by
an earlier action on the same rank when the previous virtual stage is local).

Reported: per-rank busy time, the makespan, the bubble (1 - busy / makespan, mean over ranks) and the peak number of
live activations per rank, in units of one full stage's activations for one micro-batch (a chunk holds 1/vp of a
stage): an activation is live from its F until its W (or its B when the backward is not split).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .actions import COMM, Action, Schedule, batches


class DeadlockError(RuntimeError):
    pass


@dataclass
class Costs:
    """Seconds (or any unit) per action of ONE model chunk; comm per transfer."""
    forward: float = 1.0
    backward_input: float = 1.0
    backward_weight: float = 1.0
    comm: float = 0.0

    @classmethod
    def per_stage(cls, forward: float, backward_input: float, backward_weight: float, vp: int, comm: float = 0.0):
        """Costs of a full stage's layers, divided between vp chunks."""
        return cls(forward / vp, backward_input / vp, backward_weight / vp, comm)

    def of(self, action: Action, split: bool) -> float:
        if action.kind == "F":
            return self.forward
        if action.kind == "B":
            return self.backward_input if split else self.backward_input + self.backward_weight
        if action.kind == "W":
            return self.backward_weight
        raise ValueError(action)


@dataclass
class Simulation:
    schedule: Schedule
    costs: Costs
    spans: list[list[tuple[Action, float, float]]] = field(default_factory=list)  # per rank: (action, start, end)
    busy: list[float] = field(default_factory=list)
    makespan: float = 0.0
    peak_activations: list[float] = field(default_factory=list)

    @property
    def bubble_per_rank(self) -> list[float]:
        return [1.0 - b / self.makespan if self.makespan else 0.0 for b in self.busy]

    @property
    def bubble(self) -> float:
        per_rank = self.bubble_per_rank
        return sum(per_rank) / len(per_rank)


def _check_local(schedule: Schedule) -> None:
    """Every compute action's dependencies on its own rank come earlier in the list; each (kind, chunk, mb) once."""
    n, split = schedule.num_stages, schedule.split_backward
    where = {stage: (r, c) for r, chunks in enumerate(schedule.placement) for c, stage in enumerate(chunks)}
    for rank, actions in enumerate(schedule.actions):
        done: set[tuple[str, int, int]] = set()
        for a in actions:
            if a.kind in COMM:
                continue
            key = (a.kind, a.chunk, a.mb)
            if key in done:
                raise DeadlockError(f"rank {rank}: {a} appears twice")
            stage = schedule.placement[rank][a.chunk]
            if a.kind == "F" and stage > 0:
                prev_rank, prev_chunk = where[stage - 1]
                if prev_rank == rank and ("F", prev_chunk, a.mb) not in done:
                    raise DeadlockError(f"rank {rank}: {a} before the forward of stage {stage - 1} it consumes")
            if a.kind == "B":
                if ("F", a.chunk, a.mb) not in done:
                    raise DeadlockError(f"rank {rank}: {a} before its forward")
                if stage < n - 1:
                    next_rank, next_chunk = where[stage + 1]
                    if next_rank == rank and ("B", next_chunk, a.mb) not in done:
                        raise DeadlockError(f"rank {rank}: {a} before the backward of stage {stage + 1}")
            if a.kind == "W":
                if not split:
                    raise DeadlockError(f"rank {rank}: {a} in a schedule whose backward is not split")
                if ("B", a.chunk, a.mb) not in done:
                    raise DeadlockError(f"rank {rank}: {a} before its input-gradient backward")
            done.add(key)
        expected = {(k, c, mb) for c in range(schedule.vp) for mb in range(schedule.num_micro)
                    for k in ("FBW" if split else "FB" if schedule.backward else "F")}
        if done != expected:
            missing = sorted(expected - done)[:4]
            raise DeadlockError(f"rank {rank}: missing compute actions, e.g. {missing}")


def simulate(schedule: Schedule, costs: Costs | None = None) -> Simulation:
    costs = costs or Costs()
    _check_local(schedule)
    p, split, vp = schedule.pp, schedule.split_backward, schedule.vp
    release = "W" if split else "B"
    sim = Simulation(schedule, costs, spans=[[] for _ in range(p)], busy=[0.0] * p)
    # Per rank, the steps: ("C", action, cost) or ("T", sends, receives) with channel keys precomputed.
    steps = []
    for r, actions in enumerate(schedule.actions):
        mine = []
        for step in batches(actions):
            if step[0].kind not in COMM:
                mine.append(("C", step[0], costs.of(step[0], split)))
                continue
            sends = [((r, a.peer, a.kind[-1]), a) for a in step if a.kind[0] == "S"]
            receives = [((a.peer, r, a.kind[-1]), a) for a in step if a.kind[0] == "R"]
            mine.append(("T", sends, receives))
        steps.append(mine)
    sent: dict[tuple, list[tuple[Action, float]]] = {}  # channel -> (send action, post time), in order
    taken: dict[tuple, int] = {}  # channel -> receives matched so far
    index, clock, live, peak = [0] * p, [0.0] * p, [0.0] * p, [0.0] * p
    posted = [False] * p
    remaining = sum(len(s) for s in steps)
    while remaining:
        progressed = False
        for r in range(p):
            mine = steps[r]
            while index[r] < len(mine):
                step = mine[index[r]]
                if step[0] == "C":
                    _, a, cost = step
                    sim.spans[r].append((a, clock[r], clock[r] + cost))
                    clock[r] += cost
                    sim.busy[r] += cost
                    if a.kind == "F":
                        live[r] += 1.0 / vp
                        peak[r] = max(peak[r], live[r])
                    if a.kind == release:
                        live[r] -= 1.0 / vp
                else:
                    _, sends, receives = step
                    if not posted[r]:
                        for key, a in sends:  # non-blocking: posted now
                            sent.setdefault(key, []).append((a, clock[r]))
                        posted[r] = True
                    ready = True
                    counts: dict[tuple, int] = {}
                    for key, a in receives:
                        k = taken.get(key, 0) + counts.get(key, 0)
                        counts[key] = counts.get(key, 0) + 1
                        if k >= len(sent.get(key, ())):
                            ready = False
                            break
                    if not ready:
                        break
                    start = clock[r]
                    for key, a in receives:
                        k = taken.get(key, 0)
                        taken[key] = k + 1
                        send, t = sent[key][k]
                        _check_match(schedule, key, send, a)
                        start = max(start, t)
                    end = start + costs.comm * len(receives)
                    for _, a in sends + receives:
                        sim.spans[r].append((a, clock[r], end))
                    clock[r] = end
                    posted[r] = False
                index[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            stuck = {r: " ".join(str(a) for a in schedule_step(steps[r][index[r]]))
                     for r in range(p) if index[r] < len(steps[r])}
            raise DeadlockError(f"schedule {schedule.name} (pp={p}, m={schedule.num_micro}) deadlocks; waiting: "
                                + "; ".join(f"rank {r}: {w}" for r, w in stuck.items()))
    sim.makespan = max(clock)
    sim.peak_activations = peak
    return sim


def schedule_step(step: tuple) -> list[Action]:
    return [step[1]] if step[0] == "C" else [a for _, a in step[1] + step[2]]


def _check_match(schedule: Schedule, key: tuple, send: Action, recv: Action) -> None:
    src, dst, direction = key
    s_stage = schedule.placement[src][send.chunk]
    r_stage = schedule.placement[dst][recv.chunk]
    step = 1 if direction == "F" else -1
    if send.mb != recv.mb or r_stage != s_stage + step:
        raise DeadlockError(f"out of order: rank {src} {send} (stage {s_stage}) meets rank {dst} {recv} "
                            f"(stage {r_stage})")


def stage_costs_from_events(events_per_rank: list[list[tuple]], vp: int) -> dict:
    """Mean measured cost of F, B and W for a FULL stage (a chunk's mean times vp), from StageRunner events
    (kind, chunk, mb, start, end) of every rank: what `gpt3d profile` writes as `schedule_costs`. When the profiled
    schedule did not split the backward, B holds both halves; it is split evenly (a linear's input- and
    weight-gradient GEMMs have equal FLOPs) and `weight_split_measured` is False."""
    durations: dict[str, list[float]] = {"F": [], "B": [], "W": []}
    for events in events_per_rank:
        for kind, _, _, start, end in events:
            durations[kind].append(end - start)

    def mean(kind: str) -> float:
        values = durations[kind]
        return vp * sum(values) / len(values) if values else 0.0

    measured = bool(durations["W"])
    backward = mean("B")
    return {"forward_s": mean("F"),
            "backward_input_s": backward if measured else backward / 2,
            "backward_weight_s": mean("W") if measured else backward / 2,
            "weight_split_measured": measured}


def costs_from_stage_costs(stage_costs: dict, vp: int, comm: float = 0.0) -> Costs:
    return Costs.per_stage(stage_costs["forward_s"], stage_costs["backward_input_s"],
                           stage_costs["backward_weight_s"], vp, comm)
