"""Build this rank's model chunks for a layout: slice the layers into (virtual) pipeline stages, shard them for
tensor parallelism on the meta device, mark parameters for cross-group gradient sums, then materialise weights."""
from __future__ import annotations

import torch

from gpt3d.config.model import ModelConfig
from gpt3d.config.parallel import ParallelConfig
from gpt3d.model.gpt import GPTStage
from gpt3d.model.init import materialize

from .context import ParallelContext, stage_layer_ids
from .pipeline.schedules import SPLIT_BACKWARD, placement_for
from .random import RNGTracker, StreamContext
from .tensor import apply_tensor_parallel, use_parallel_linears, use_store_fed_head


def build_model_chunks(model_cfg: ModelConfig, parallel: ParallelConfig, ctx: ParallelContext, seed: int,
                       tracker: RNGTracker) -> list[GPTStage]:
    layout = ctx.layout
    stages = stage_layer_ids(model_cfg.n_layers, layout.pp, layout.vp, parallel.pipeline_split)
    rng = StreamContext(tracker)
    chunks = []
    placement = placement_for(parallel.schedule, layout.pp, layout.vp)[ctx.pp_rank]
    for c in range(layout.vp):
        virtual = placement[c]
        first, last = virtual == 0, virtual == len(stages) - 1
        with torch.device("meta"):
            stage = GPTStage(model_cfg, stages[virtual], first, last)
        if layout.tp > 1:
            apply_tensor_parallel(stage, ctx.tp_group, parallel.sequence_parallel, rng)
        elif parallel.schedule in SPLIT_BACKWARD or parallel.gradient_accumulation_fusion:
            # linears whose weight gradient goes through a WeightGradStore: B/W-splittable, fused accumulation
            use_parallel_linears(stage, ctx.tp_group, parallel.sequence_parallel)
        if parallel.gradient_accumulation_fusion:
            use_store_fed_head(stage)
        if parallel.recompute == "full":
            stage.recompute_full = True
            stage.recompute_rng_context = rng
        elif parallel.recompute == "selective":
            for block in stage.blocks.values():
                block.attn.recompute_core = True
        materialize(stage, model_cfg, seed, ctx.device)
        if model_cfg.tie_embeddings and layout.pp > 1:
            if stage.embed is not None:
                stage.embed.tok.weight.embedding_sync = True
            if stage.head is not None and stage.head.weight is not None:
                stage.head.weight.embedding_sync = True
        chunks.append(stage)
    return chunks
