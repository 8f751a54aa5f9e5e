"""ParallelContext: the rank grid and its process groups, built once and passed explicitly.

Rank grid axis order (fastest first): tp, dp, pp, i.e.  rank = tp_rank + tp * (dp_rank + dp * pp_rank).
TP fastest keeps a tensor-parallel group on consecutive ranks, hence inside one node; PP slowest puts pipeline
stages on different nodes, where only point-to-point activations cross the slower links.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist

from gpt3d.config.base import ConfigError
from gpt3d.config.divisibility import layout_rules_broken
from gpt3d.config.model import ModelConfig
from gpt3d.config.parallel import ParallelConfig

from .shared_memory import SharedMemoryCollectives


class LayoutError(ConfigError):
    """The parallel layout does not fit the world size, the model or the batch."""


@dataclass
class Group:
    """One communication group as seen from this rank, with the bytes it moved (for accounting)."""
    name: str
    ranks: list[int]
    rank: int  # this rank's index inside the group
    pg: Optional[object] = None  # torch ProcessGroup; None when the group is this rank alone
    shm: Optional[object] = None  # SharedMemoryCollectives when the ranks share a host (CPU, gloo); else None
    bytes_moved: dict[str, int] = field(default_factory=dict)
    current_op: str = ""

    @property
    def size(self) -> int:
        return len(self.ranks)

    def account(self, op: str, nbytes: int) -> None:
        self.current_op = op
        self.bytes_moved[op] = self.bytes_moved.get(op, 0) + nbytes

    def total_bytes(self) -> int:
        return sum(self.bytes_moved.values())

    def reset_bytes(self) -> None:
        self.bytes_moved.clear()

    def global_rank(self, index: int) -> int:
        return self.ranks[index]


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    vp: int = 1

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(tp_rank, dp_rank, pp_rank) of a global rank."""
        return rank % self.tp, (rank // self.tp) % self.dp, rank // (self.tp * self.dp)

    def rank_of(self, tp_rank: int, dp_rank: int, pp_rank: int) -> int:
        return tp_rank + self.tp * (dp_rank + self.dp * pp_rank)


def resolve_layout(parallel: ParallelConfig, world_size: int) -> Layout:
    dp = parallel.dp if parallel.dp is not None else world_size // (parallel.tp * parallel.pp)
    layout = Layout(parallel.tp, parallel.pp, max(dp, 1), parallel.vp)
    if layout.world_size != world_size:
        raise LayoutError(
            f"parallel layout tp={parallel.tp} x pp={parallel.pp} x dp={layout.dp} = {layout.world_size} ranks, but "
            f"the world has {world_size}; make tp*pp*dp equal the number of processes")
    return layout


def validate_layout(layout: Layout, model: ModelConfig, parallel: ParallelConfig, global_batch: int,
                    micro_batch: int, seq_len: int) -> int:
    """Check everything the layout needs before any group is created; returns the number of micro-batches."""
    t, p, d, v = layout.tp, layout.pp, layout.dp, layout.vp
    stages = p * v
    num_micro = global_batch // (micro_batch * d)
    messages = {
        "n_heads": f"model.n_heads={model.n_heads} is not divisible by tp={t}; pick tp dividing the heads",
        "padded_vocab": f"padded vocabulary {model.padded_vocab_size} (vocab {model.vocab_size} padded to a multiple "
                        f"of {model.vocab_pad_multiple}) is not divisible by tp={t}; raise model.vocab_pad_multiple",
        "d_ff": f"model.d_ff={model.d_ff} is not divisible by tp={t}",
        "seq_len": f"sequence parallel needs seq_len={seq_len} divisible by tp={t}",
        "n_layers": f"model.n_layers={model.n_layers} cannot be split evenly into pp*vp={p}*{v}={stages} stages; "
                    f"choose pp*vp dividing the layers or give parallel.pipeline_split",
        "global_batch": f"train.global_batch_size={global_batch} is not micro_batch_size={micro_batch} x "
                        f"num_micro_batches x dp={d}; make it a multiple of {micro_batch * d}",
    }
    # (the micro-batch rule of the helper assumes vp > 1 means interleaving; here the schedule decides, below)
    broken = [rule for rule in layout_rules_broken(model, t, p, v, d, seq_len, parallel.sequence_parallel,
                                                   parallel.pipeline_split is not None, global_batch, micro_batch)
              if rule != "micro_batches"]
    tp_rules = [rule for rule in broken if rule in ("n_heads", "padded_vocab", "d_ff", "seq_len")]
    if tp_rules:
        raise LayoutError(messages[tp_rules[0]])
    if parallel.schedule == "zbv" and parallel.pipeline_split is None and model.n_layers % stages:
        raise LayoutError(f"schedule zbv: model.n_layers={model.n_layers} cannot be divided into 2*pp={stages} model "
                          f"chunks (two per rank, in a V); choose pp dividing n_layers / 2")
    if "n_layers" in broken:
        raise LayoutError(messages["n_layers"])
    if model.n_layers < stages:
        raise LayoutError(f"model.n_layers={model.n_layers} is fewer than pp*vp={stages} stages")
    if "global_batch" in broken:
        raise LayoutError(messages["global_batch"])
    if parallel.schedule == "interleaved" and num_micro % p:
        raise LayoutError(f"interleaved schedule (vp={v}) needs the number of micro-batches ({num_micro} = "
                          f"{global_batch} / ({micro_batch} x dp {d})) divisible by pp={p}")
    if parallel.schedule == "zbv" and num_micro < p:
        raise LayoutError(f"schedule zbv needs at least pp={p} micro-batches, got {num_micro} = {global_batch} / "
                          f"({micro_batch} x dp {d}); raise train.global_batch_size or lower micro_batch_size")
    return num_micro


def stage_layer_ids(n_layers: int, pp: int, vp: int, split: Optional[list[int]] = None) -> list[list[int]]:
    """Layers of every virtual stage, in pipeline order: entry [c * pp + r] belongs to rank r, model chunk c."""
    sizes = split if split is not None else [n_layers // (pp * vp)] * (pp * vp)
    out, start = [], 0
    for size in sizes:
        out.append(list(range(start, start + size)))
        start += size
    return out


class ParallelContext:
    """This rank's coordinates and groups. Built collectively by every rank (group creation is collective)."""

    def __init__(self, layout: Layout, rank: int, device: torch.device, timeout_s: float = 300.0,
                 last_stage_rank: Optional[int] = None, shared_memory: bool = True):
        self.layout = layout
        self.shared_memory = shared_memory and device.type == "cpu"  # collectives through /dev/shm where possible
        self.rank = rank
        self.device = device
        self.tp_rank, self.dp_rank, self.pp_rank = layout.coords(rank)
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.schedule_step = ""  # where the pipeline schedule is; reported when a collective times out
        L = layout
        self.tp_group = self._make_groups("tp", [[L.rank_of(t, d, p) for t in range(L.tp)]
                                                 for p in range(L.pp) for d in range(L.dp)])
        self.dp_group = self._make_groups("dp", [[L.rank_of(t, d, p) for d in range(L.dp)]
                                                 for p in range(L.pp) for t in range(L.tp)])
        self.pp_group = self._make_groups("pp", [[L.rank_of(t, d, p) for p in range(L.pp)]
                                                 for d in range(L.dp) for t in range(L.tp)])
        # First and last stage: the tied embedding's gradients are summed across them.
        # Middle stages hold no embedding: each is alone in its own (communication-free) group.
        # `last_stage_rank`: the pp rank of the last virtual stage (0 under ZB-V, whose V ends where it starts; the two
        # copies are then summed locally and rank 0 is alone in its group).
        last = L.pp - 1 if last_stage_rank is None else last_stage_rank
        self.last_stage_rank = last
        emb = [[L.rank_of(t, d, 0)] + ([L.rank_of(t, d, last)] if last != 0 else [])
               for d in range(L.dp) for t in range(L.tp)]
        emb += [[L.rank_of(t, d, p)] for p in range(1, L.pp) if p != last for d in range(L.dp) for t in range(L.tp)]
        self.embedding_group = self._make_groups("embedding", emb)
        self.world_group = self._make_groups("world", [list(range(L.world_size))])
        self._replica_group: Optional[Group] = None

    def _make_groups(self, name: str, all_ranks: list[list[int]]) -> Group:
        """Create every group of this kind (collective on all ranks, in the same order) and keep this rank's."""
        mine = None
        for ranks in all_ranks:
            pg = None
            if len(ranks) > 1 and dist.is_initialized():
                if len(ranks) == dist.get_world_size():
                    pg = dist.group.WORLD
                else:
                    pg = dist.new_group(ranks, timeout=self.timeout)
            if self.rank in ranks:
                mine = Group(name, ranks, ranks.index(self.rank), pg)
        assert mine is not None, f"rank {self.rank} is in no {name} group"
        if mine.pg is not None and self.shared_memory and dist.get_backend(mine.pg) == "gloo":
            mine.shm = SharedMemoryCollectives.create(mine.pg, mine.rank, mine.size, self.timeout.total_seconds())
        return mine

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.layout.pp - 1

    def coords_text(self) -> str:
        return f"rank {self.rank} (tp {self.tp_rank}, dp {self.dp_rank}, pp {self.pp_rank})"

    def replica_group(self) -> Group:
        """The tp x pp ranks of this rank's model replica (one dp index). Only alignment's rollouts need it, so it is
        made on first use: a collective, which every rank reaches at the same point."""
        if self._replica_group is None:
            L = self.layout
            self._replica_group = self._make_groups(
                "replica", [[L.rank_of(t, d, p) for p in range(L.pp) for t in range(L.tp)] for d in range(L.dp)])
        return self._replica_group

    def groups(self) -> list[Group]:
        return [self.tp_group, self.dp_group, self.pp_group, self.embedding_group]

    def comm_bytes(self) -> dict[str, int]:
        return {g.name: g.total_bytes() for g in self.groups()}

    def reset_comm_bytes(self) -> None:
        for g in self.groups():
            g.reset_bytes()
        self.world_group.reset_bytes()


def single_process_context(device: torch.device | str = "cpu") -> ParallelContext:
    return ParallelContext(Layout(1, 1, 1), 0, torch.device(device))
