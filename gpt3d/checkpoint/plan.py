"""Which part of every full tensor each rank of a layout holds, computed without building a model (pure Python).

Mirrors gpt3d/parallel (tests/checkpoint checks it against real trainers): TP shards are contiguous chunks along
one dim (column-parallel qkv/fc1 and the vocabulary matrices split dim 0, row-parallel proj/fc2 weights split dim 1),
pipeline stage s holds the layers of stage_layer_ids and lives on pp rank stage_rank(s): r for s = c * pp + r, except
under ZB-V, whose V puts stages r and 2pp-1-r on rank r (gpt3d/parallel/pipeline/schedules.py, v_placement); the
embedding is on the first stage, the final LayerNorm (and an untied head) on the last (rank 0 under ZB-V).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from gpt3d.config.divisibility import layout_rules_broken
from gpt3d.config.model import ModelConfig

from .errors import CheckpointError

ROW_SPLIT = ("attn.qkv.weight", "attn.qkv.bias", "mlp.fc1.weight", "mlp.fc1.bias")
COL_SPLIT = ("attn.proj.weight", "mlp.fc2.weight")
VOCAB = ("embed.tok.weight", "head.weight")


@dataclass(frozen=True)
class TargetLayout:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    vp: int = 1
    pipeline_split: Optional[tuple[int, ...]] = None
    schedule: str = "1f1b"  # decides which rank holds which stage (ZB-V: a V); see stage_rank


def stage_rank(stage: int, layout: TargetLayout) -> int:
    """The pp rank holding (virtual) pipeline stage `stage` of `layout` (mirrors schedules.placement_for, without
    importing the torch side of gpt3d)."""
    pp = layout.pp
    if layout.schedule == "zbv":
        return stage if stage < pp else 2 * pp - 1 - stage
    return stage % pp


def model_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Full shape of every parameter of build_gpt(cfg), in model order (the canonical state-dict keys)."""
    d, a, f, v = cfg.d_model, cfg.attn_width, cfg.d_ff, cfg.padded_vocab_size
    out: dict[str, tuple[int, ...]] = {"embed.tok.weight": (v, d), "embed.pos.weight": (cfg.seq_len, d)}
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        out.update({p + "ln1.weight": (d,), p + "ln1.bias": (d,), p + "attn.qkv.weight": (3 * a, d),
                    p + "attn.qkv.bias": (3 * a,), p + "attn.proj.weight": (d, a), p + "attn.proj.bias": (d,),
                    p + "ln2.weight": (d,), p + "ln2.bias": (d,), p + "mlp.fc1.weight": (f, d),
                    p + "mlp.fc1.bias": (f,), p + "mlp.fc2.weight": (d, f), p + "mlp.fc2.bias": (d,)})
    out.update({"final_ln.weight": (d,), "final_ln.bias": (d,)})
    if not cfg.tie_embeddings:
        out["head.weight"] = (v, d)
    for head, width in cfg.task_heads.items():  # fine-tuning heads (classify, reward): last stage, TP-replicated
        out.update({f"task_heads.{head}.weight": (width, d), f"task_heads.{head}.bias": (width,)})
    return out


def shard_dim(name: str) -> Optional[int]:
    """The dim tensor parallelism splits `name` along, or None when every TP rank holds all of it."""
    if name in VOCAB or name.endswith(ROW_SPLIT):
        return 0
    if name.endswith(COL_SPLIT):
        return 1
    return None


def tp_region(shape: tuple[int, ...], dim: Optional[int], rank: int, world: int) -> tuple[tuple, tuple]:
    """(start, size) of TP rank `rank`'s chunk of a full tensor."""
    start, size = [0] * len(shape), list(shape)
    if dim is not None and world > 1:
        size[dim] = shape[dim] // world
        start[dim] = rank * size[dim]
    return tuple(start), tuple(size)


def stage_layers(n_layers: int, pp: int, vp: int, split: Optional[tuple[int, ...]]) -> list[list[int]]:
    sizes = list(split) if split is not None else [n_layers // (pp * vp)] * (pp * vp)
    out, start = [], 0
    for size in sizes:
        out.append(list(range(start, start + size)))
        start += size
    return out


def check_layout(cfg: ModelConfig, layout: TargetLayout) -> None:
    t, stages = layout.tp, layout.pp * layout.vp
    messages = {"n_heads": f"tp={t} does not divide n_heads={cfg.n_heads}",
                "padded_vocab": f"tp={t} does not divide the padded vocabulary {cfg.padded_vocab_size}",
                "d_ff": f"tp={t} does not divide d_ff={cfg.d_ff}",
                "n_layers": f"pp*vp={stages} does not divide n_layers={cfg.n_layers}"}
    broken = layout_rules_broken(cfg, t, layout.pp, layout.vp, pipeline_split_given=layout.pipeline_split is not None)
    problems = [messages[rule] for rule in broken]
    if layout.pipeline_split is not None:
        if len(layout.pipeline_split) != stages or sum(layout.pipeline_split) != cfg.n_layers:
            problems.append(f"pipeline_split {list(layout.pipeline_split)} does not give pp*vp={stages} stages "
                            f"summing to n_layers={cfg.n_layers}")
    if layout.vp > 1 and layout.pp == 1:
        problems.append("vp > 1 needs pp > 1")
    if layout.schedule == "zbv" and (layout.vp != 2 or layout.pp < 2):
        problems.append(f"schedule zbv runs exactly 2 model chunks per rank on pp >= 2 ranks, got pp={layout.pp} "
                        f"vp={layout.vp}")
    if layout.schedule in ("gpipe", "1f1b", "zbh1") and layout.vp != 1:
        problems.append(f"schedule {layout.schedule} runs one model chunk per rank, got vp={layout.vp} (vp > 1 "
                        f"needs --schedule interleaved or zbv)")
    if layout.schedule == "interleaved" and layout.vp < 2:
        problems.append("schedule interleaved needs vp >= 2")
    if problems:
        raise CheckpointError(f"layout tp={t} pp={layout.pp} vp={layout.vp}: {'; '.join(problems)}; "
                              f"choose degrees that divide the model")


def owner_stage_ranks(cfg: ModelConfig, layout: TargetLayout) -> dict[str, int]:
    """Full parameter name -> the pp rank holding it (the tied head copy on the last stage is not a separate entry)."""
    last = stage_rank(layout.pp * layout.vp - 1, layout)
    owner = {"embed.tok.weight": 0, "embed.pos.weight": 0, "final_ln.weight": last, "final_ln.bias": last}
    if not cfg.tie_embeddings:
        owner["head.weight"] = last
    for s, layers in enumerate(stage_layers(cfg.n_layers, layout.pp, layout.vp, layout.pipeline_split)):
        for i in layers:
            owner[f"blocks.{i}"] = stage_rank(s, layout)
    out = {}
    for name in model_shapes(cfg):
        key = ".".join(name.split(".")[:2]) if name.startswith("blocks.") else name
        out[name] = last if name.startswith("task_heads.") else owner[key]
    return out


def rank_regions(cfg: ModelConfig, layout: TargetLayout, tp_rank: int, pp_rank: int
                 ) -> list[tuple[str, tuple, tuple]]:
    """(full parameter name, start, size) of every parameter region one (tp, pp) rank stores, in model order."""
    shapes = model_shapes(cfg)
    owners = owner_stage_ranks(cfg, layout)
    out = []
    for name, shape in shapes.items():
        if owners[name] != pp_rank or (shard_dim(name) is None and tp_rank != 0):
            continue  # TP-replicated tensors are stored once, by TP rank 0
        start, size = tp_region(shape, shard_dim(name), tp_rank, layout.tp)
        out.append((name, start, size))
    return out
