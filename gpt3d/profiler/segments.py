"""The profiled units of one rank's model chunks ("segments"), their analytical FLOPs and parameter bytes, and the
wrappers that time them and count the activation bytes they save for backward.

Per chunk, in forward order: embedding (first stage); for every transformer layer: input LayerNorm, QKV projection,
attention core (with the head split/merge reshapes around it), output projection, MLP (fc1, GELU, fc2) and
residual/LayerNorm (the block's own work: the fused residual add + second LayerNorm, the final residual add, dropouts);
then the final LayerNorm and head + loss (last stage).

Wrappers are instance attributes (`module.forward = ...`, `attn.core = ...`, `head.loss = ...`) installed for a
profiled step and deleted afterwards, so an unprofiled step runs the untouched model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from gpt3d.config.run import RunConfig
from gpt3d.model.flops import head_forward_flops, layer_forward_flops

from .clock import FORWARD, Enter, Exit, SegmentClock

# kind -> label used in tables
KIND_LABELS = {
    "embedding": "embedding",
    "ln1": "input LayerNorm",
    "qkv": "attention QKV projection",
    "attn_core": "attention core",
    "out_proj": "attention output projection",
    "mlp": "MLP",
    "residual_ln": "residual + LayerNorm",
    "final_ln": "final LayerNorm",
    "head": "head + loss",
}
BLOCK_KINDS = ("ln1", "qkv", "attn_core", "out_proj", "mlp", "residual_ln")


@dataclass
class Segment:
    index: int
    name: str  # e.g. "layer3.attn_core"
    kind: str
    layer: Optional[int]  # global transformer layer index
    chunk: int  # model chunk on this rank (virtual pipeline)
    virtual_stage: int
    forward_flops: float  # of the whole layer over the global batch (all TP shards and DP replicas)
    forward_flops_rank: float  # this rank's share of one step (its micro-batches, its TP shard)
    recomputed: bool  # re-run in backward under the configured recomputation
    param_bytes: int  # this rank's parameters of the unit


def _param_bytes(*modules: Optional[nn.Module]) -> int:
    total = 0
    for module in modules:
        if module is None:
            continue
        for p in module.parameters(recurse=True):
            total += p.numel() * p.element_size()
    return total


def _densities(cfg: RunConfig) -> list[float]:
    kinds = cfg.model.layer_attention_kinds()
    if "sparse" not in kinds:
        return [1.0] * len(kinds)
    from gpt3d.planner.sparsity import layout_density
    sparse = layout_density(cfg.model.sparse, cfg.train.seq_len, cfg.model.n_heads)
    return [1.0 if k == "dense" else sparse for k in kinds]


def build_segments(cfg: RunConfig, chunks: list[nn.Module], pp_rank: int, pp: int, tp: int, dp: int,
                   num_micro: int) -> list[Segment]:
    model, G, s, mb = cfg.model, cfg.train.global_batch_size, cfg.train.seq_len, cfg.train.micro_batch_size
    recompute = cfg.parallel.recompute
    densities = _densities(cfg)
    rank_share = num_micro / tp  # this rank's micro-batches, 1/tp of every GEMM

    out: list[Segment] = []
    from gpt3d.parallel.pipeline.schedules import placement_for
    placement = placement_for(cfg.parallel.schedule, pp, len(chunks))[pp_rank]  # chunk -> virtual stage

    def add(name, kind, layer, chunk, flops_global, flops_mb, recomputed, param_bytes):
        out.append(Segment(len(out), name, kind, layer, chunk, placement[chunk], flops_global,
                           flops_mb * rank_share, recomputed, param_bytes))

    for c, stage in enumerate(chunks):
        if stage.embed is not None:
            add("embedding", "embedding", None, c, 0.0, 0.0, False, _param_bytes(stage.embed))
        for key, block in stage.blocks.items():
            i = int(key)
            full = layer_forward_flops(model, G, s, densities[i])
            per_mb = layer_forward_flops(model, mb, s, densities[i])
            rec_all = recompute == "full"
            add(f"layer{i}.ln1", "ln1", i, c, 0.0, 0.0, rec_all, _param_bytes(block.ln1))
            add(f"layer{i}.qkv", "qkv", i, c, full.qkv, per_mb.qkv, rec_all, _param_bytes(block.attn.qkv))
            add(f"layer{i}.attn_core", "attn_core", i, c, full.attention_core, per_mb.attention_core,
                rec_all or recompute == "selective", 0)
            add(f"layer{i}.out_proj", "out_proj", i, c, full.out_proj, per_mb.out_proj, rec_all,
                _param_bytes(block.attn.proj))
            add(f"layer{i}.mlp", "mlp", i, c, full.fc1 + full.fc2, per_mb.fc1 + per_mb.fc2, rec_all,
                _param_bytes(block.mlp))
            add(f"layer{i}.residual_ln", "residual_ln", i, c, 0.0, 0.0, rec_all, _param_bytes(block.ln2))
        if stage.final_ln is not None:
            add("final_ln", "final_ln", None, c, 0.0, 0.0, False, _param_bytes(stage.final_ln))
        if stage.head is not None:
            add("head", "head", None, c, head_forward_flops(model, G, s), head_forward_flops(model, mb, s), False,
                _param_bytes(stage.head))
    return out


class SavedBytes:
    """Activation bytes saved for backward during each segment's forward (saved-tensor hooks), counted once per
    storage and excluding parameters; checkpointed units count the inputs the checkpoint holds instead."""

    def __init__(self, clock: SegmentClock, n_segments: int, params: list[torch.Tensor]):
        self.clock = clock
        self.bytes = [0] * n_segments
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in params}
        self.seen: set[int] = set()

    def add(self, seg: int, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.seen and ptr not in self.param_ptrs:
            self.seen.add(ptr)
            self.bytes[seg] += storage.nbytes()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        stack = self.clock.stack
        if stack and stack[-1][1] == FORWARD:
            self.add(stack[-1][0], t)
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def collect(self) -> list[int]:
        out, self.bytes = self.bytes, [0] * len(self.bytes)
        return out


def _timed(clock: SegmentClock, seg: int, fn: Callable, grad_inputs: int, saved: Optional[SavedBytes] = None,
           checkpointed: bool = False) -> Callable:
    """fn wrapped: exclusive forward (or recompute) time, and Enter/Exit nodes for its backward time."""

    def wrapper(*args, **kwargs):
        phase = clock.forward_phase()
        clock.push(seg, phase)
        try:
            track = phase == FORWARD and torch.is_grad_enabled()
            if track and grad_inputs and all(a.requires_grad for a in args[:grad_inputs]):
                entered = Enter.apply(clock, seg, *args[:grad_inputs])
                if grad_inputs == 1:
                    entered = (entered,)
                if checkpointed and saved is not None:
                    for a in args[:grad_inputs]:
                        saved.add(seg, a)
                args = (*entered, *args[grad_inputs:])
            out = fn(*args, **kwargs)
            if track and isinstance(out, torch.Tensor) and out.requires_grad:
                out = Exit.apply(clock, seg, out)
            return out
        finally:
            clock.pop(seg)

    return wrapper


class Instrumentation:
    """Installs the wrappers on a rank's chunks; `remove` restores the untouched modules."""

    def __init__(self, chunks: list[nn.Module], segments: list[Segment], clock: SegmentClock, saved: SavedBytes):
        self.chunks, self.segments, self.clock, self.saved = chunks, segments, clock, saved
        self.forwards = [0] * len(chunks)  # training forwards per chunk (micro-batches seen)
        self._installed: list[tuple[object, str]] = []

    def _set(self, obj: object, attr: str, value: Callable) -> None:
        if attr in obj.__dict__:
            raise RuntimeError(f"profiler: {type(obj).__name__}.{attr} is already overridden on the instance; "
                               f"another profiler is attached")
        setattr(obj, attr, value)
        self._installed.append((obj, attr))

    def install(self) -> None:
        by_name = {(seg.chunk, seg.name): seg.index for seg in self.segments}
        clock, saved = self.clock, self.saved
        for c, stage in enumerate(self.chunks):
            def seg_of(name, c=c):
                return by_name[(c, name)]
            if stage.embed is not None:
                self._set(stage.embed, "forward", _timed(clock, seg_of("embedding"), stage.embed.forward, 0))
            for key, block in stage.blocks.items():
                i = int(key)
                full = bool(getattr(stage, "recompute_full", False))
                self._set(block, "forward", _timed(clock, seg_of(f"layer{i}.residual_ln"), block.forward, 1,
                                                   saved, checkpointed=full))
                self._set(block.ln1, "forward", _timed(clock, seg_of(f"layer{i}.ln1"), block.ln1.forward, 1))
                core = seg_of(f"layer{i}.attn_core")
                self._set(block.attn, "forward", _timed(clock, core, block.attn.forward, 1))
                self._set(block.attn, "core", _timed(clock, core, block.attn.core, 3, saved,
                                                     checkpointed=bool(block.attn.recompute_core)))
                self._set(block.attn.qkv, "forward", _timed(clock, seg_of(f"layer{i}.qkv"), block.attn.qkv.forward, 1))
                self._set(block.attn.proj, "forward",
                          _timed(clock, seg_of(f"layer{i}.out_proj"), block.attn.proj.forward, 1))
                self._set(block.mlp, "forward", _timed(clock, seg_of(f"layer{i}.mlp"), block.mlp.forward, 1))
            if stage.final_ln is not None:
                self._set(stage.final_ln, "forward", _timed(clock, seg_of("final_ln"), stage.final_ln.forward, 1))
            if stage.head is not None:
                self._set(stage.head, "loss", _timed(clock, seg_of("head"), stage.head.loss, 1))
            self._set(stage, "forward", self._chunk_forward(c, stage.forward))

    def _chunk_forward(self, c: int, forward: Callable) -> Callable:
        saved = self.saved

        def wrapper(*args, **kwargs):
            if not torch.is_grad_enabled():
                return forward(*args, **kwargs)
            self.forwards[c] += 1
            saved.seen = set()
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
                return forward(*args, **kwargs)

        return wrapper

    def remove(self) -> None:
        for obj, attr in reversed(self._installed):
            delattr(obj, attr)
        self._installed.clear()

    def collect_forwards(self) -> list[int]:
        out, self.forwards = self.forwards, [0] * len(self.chunks)
        return out
