"""The inference engine over the policy being trained: a KV-cached copy of this rank's training stage in the same
tensor x pipeline layout (gpt3d/inference/), rebuilt from the current weights for each step's rollouts. Each
data-parallel replica samples its own share of the prompts; the completions are shared inside the replica only."""
from __future__ import annotations

import torch
from torch import nn

from gpt3d.config.model import ModelConfig
from gpt3d.config.generate import SamplingConfig
from gpt3d.inference import InferenceEngine
from gpt3d.inference.pipeline import from_last_stage
from gpt3d.model.gpt import GPTStage
from gpt3d.model.init import param_full_name
from gpt3d.parallel.context import Group, ParallelContext


def sample(engine: InferenceEngine, replica: Group, prompts: list[list[int]], sampling: SamplingConfig,
           request_ids: range) -> list[list[int]]:
    """This replica's completions (token ids), on every rank of the replica. The engine's own result is shared from
    one replica; each replica's last stage collects its completions as they finish and shares them in the replica."""
    finished: dict[int, list[int]] = {}
    engine.generate(prompts, sampling, request_ids=request_ids,
                    on_complete=lambda c: finished.__setitem__(c.index, list(c.tokens)))
    mine = [finished[i] for i in request_ids] if engine.stage.last else None
    return from_last_stage(engine.ctx, mine, replica)


def rollout_engine(chunk: nn.Module, ctx: ParallelContext, cfg: ModelConfig) -> InferenceEngine:
    """An engine whose stage holds the same layers and tensor-parallel shards as `chunk` (vp = 1), weights copied."""
    from gpt3d.inference.loading import _region, fill_stage
    from gpt3d.parallel.random import RNGTracker, StreamContext
    from gpt3d.parallel.tensor import apply_tensor_parallel
    with torch.device("meta"):
        stage = GPTStage(cfg, [int(i) for i in chunk.blocks], chunk.first, chunk.last)
    if ctx.layout.tp > 1:
        apply_tensor_parallel(stage, ctx.tp_group, False, StreamContext(RNGTracker(ctx.device)))
    trained = {param_full_name(p, n): p for n, p in chunk.named_parameters()}

    def read(name: str, start: tuple, size: tuple) -> torch.Tensor:
        param = trained[name]
        assert (start, size) == _region(param), f"{name}: inference shard {start}+{size} is not the training shard"
        return param.detach().clone()
    dtype = next(chunk.parameters()).dtype
    return InferenceEngine(fill_stage(stage, read, dtype, ctx.device), ctx, cfg)
