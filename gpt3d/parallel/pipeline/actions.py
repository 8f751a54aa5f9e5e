"""A pipeline schedule as data: for every pipeline rank, the ordered list of actions it executes.

Compute actions: F(chunk, mb) forward, B(chunk, mb) backward to the input (and to the weights too, unless the schedule
also lists W(chunk, mb)), W(chunk, mb) the deferred weight gradients. Communication actions name the peer pp rank:
SEND_F / RECV_F carry activations (towards the next virtual stage), SEND_B / RECV_B carry gradients (towards the
previous one). `chunk` is always the local model chunk of the rank executing the action.

A schedule generator only orders the compute actions; `with_communication` derives every transfer from the placement
of virtual stages on ranks, so no schedule writes send/receive logic by hand: a SEND follows the compute that produced
its tensor, a RECV precedes the compute that needs it, and a run of adjacent transfers is one batch (posted together,
waited together). The simulator (simulator.py) proves a schedule deadlock-free before any rank runs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

COMPUTE = ("F", "B", "W")
COMM = ("SEND_F", "RECV_F", "SEND_B", "RECV_B")


class Action(NamedTuple):
    kind: str  # one of COMPUTE or COMM
    chunk: int  # local model chunk on the executing rank
    mb: int  # micro-batch
    peer: int = -1  # pp rank on the other end of a transfer

    def __str__(self) -> str:
        if self.kind in COMPUTE:
            return f"{self.kind}{self.chunk}.{self.mb}"
        arrow = "->" if self.kind.startswith("SEND") else "<-"
        return f"{self.kind}{self.chunk}.{self.mb}{arrow}{self.peer}"


def F(chunk: int, mb: int) -> Action:
    return Action("F", chunk, mb)


def B(chunk: int, mb: int) -> Action:
    return Action("B", chunk, mb)


def W(chunk: int, mb: int) -> Action:
    return Action("W", chunk, mb)


@dataclass
class Schedule:
    """Every rank's action list. placement[rank][chunk] is the virtual stage (0 = embedding .. pp*vp-1 = loss)."""
    name: str
    pp: int
    vp: int
    num_micro: int
    placement: list[list[int]]
    actions: list[list[Action]]
    split_backward: bool  # B and W are separate actions (zero-bubble schedules)
    backward: bool = True  # False: forwards only (evaluation)

    @property
    def num_stages(self) -> int:
        return self.pp * self.vp

    def locate(self, stage: int) -> tuple[int, int]:
        """(rank, chunk) holding virtual stage `stage`."""
        for rank, chunks in enumerate(self.placement):
            if stage in chunks:
                return rank, chunks.index(stage)
        raise KeyError(stage)

    def compute(self, rank: int) -> list[Action]:
        return [a for a in self.actions[rank] if a.kind in COMPUTE]


def with_communication(name: str, pp: int, vp: int, num_micro: int, placement: list[list[int]],
                       compute: list[list[Action]], split_backward: bool, backward: bool = True) -> Schedule:
    """Insert the transfers every rank's compute order implies (see the module docstring)."""
    n = pp * vp
    where = {stage: (rank, chunk) for rank, chunks in enumerate(placement) for chunk, stage in enumerate(chunks)}
    actions = []
    for rank, order in enumerate(compute):
        out: list[Action] = []
        for a in order:
            stage = placement[rank][a.chunk]
            if a.kind == "F" and stage > 0 and where[stage - 1][0] != rank:
                out.append(Action("RECV_F", a.chunk, a.mb, where[stage - 1][0]))
            if a.kind == "B" and stage < n - 1 and where[stage + 1][0] != rank:
                out.append(Action("RECV_B", a.chunk, a.mb, where[stage + 1][0]))
            out.append(a)
            if a.kind == "F" and stage < n - 1 and where[stage + 1][0] != rank:
                out.append(Action("SEND_F", a.chunk, a.mb, where[stage + 1][0]))
            if a.kind == "B" and stage > 0 and where[stage - 1][0] != rank:
                out.append(Action("SEND_B", a.chunk, a.mb, where[stage - 1][0]))
        actions.append(out)
    return Schedule(name, pp, vp, num_micro, placement, actions, split_backward, backward)


def batches(actions: list[Action]) -> list[list[Action]]:
    """Group a rank's list into steps: a compute action alone, or a maximal run of adjacent transfers."""
    out: list[list[Action]] = []
    for a in actions:
        if a.kind in COMM and out and out[-1][0].kind in COMM:
            out[-1].append(a)
        else:
            out.append([a])
    return out
