"""A Trainer for the fine-tuning objectives: packed micro-batches, the objective's loss on the last stage, and (DPO)
the frozen reference model run forward over each global batch before the policy's step."""
from __future__ import annotations

import numpy as np
import torch

from gpt3d.config.run import RunConfig
from gpt3d.parallel import comm
from gpt3d.parallel.build import build_model_chunks
from gpt3d.train.runtime import Runtime
from gpt3d.train.trainer import Trainer

from .objectives import METRICS, PackedBatch, objective_for, reference_logps
from .weights import load_weights


def set_objective(chunks: list, objective) -> None:
    for chunk in chunks:
        if chunk.last:
            chunk.objective = objective


class ObjectiveTrainer(Trainer):
    def __init__(self, cfg: RunConfig, runtime: Runtime):
        super().__init__(cfg, runtime)
        set_objective(self.chunks, objective_for(cfg))
        self.fresh_heads: list[str] = []
        if cfg.finetune.init_from is not None:
            self.fresh_heads = load_weights(self.chunks, cfg.finetune.init_from)
        self.reference = None
        if cfg.train.objective == "dpo":
            self.reference = self.frozen_copy(cfg.finetune.init_from)
            set_objective(self.reference, reference_logps)

    def frozen_copy(self, path):
        """The starting model again (from `path`, or the same seeded init), frozen and in eval mode."""
        chunks = build_model_chunks(self.cfg.model, self.cfg.parallel, self.ctx, self.cfg.train.seed, self.tracker)
        if path is not None:
            load_weights(chunks, path)
        for chunk in chunks:
            chunk.eval()
            chunk.requires_grad_(False)
        return chunks

    def micro_batches(self, samples: np.ndarray) -> tuple[list, list[PackedBatch]]:
        """This DP rank's rows of the global batch [G, CHANNELS, s], as micro-batches of (token ids, PackedBatch);
        for DPO each batch also gets the reference model's completion log-probs (last stage)."""
        per_dp = samples.shape[0] // self.ctx.layout.dp
        mine = samples[self.ctx.dp_rank * per_dp:(self.ctx.dp_rank + 1) * per_dp]
        mb = self.cfg.train.micro_batch_size
        batches = [PackedBatch.from_rows(mine[i:i + mb], self.ctx.device) for i in range(0, per_dp, mb)]
        inputs = [b.tokens for b in batches]
        if self.reference is not None:
            runner = self.make_runner(inputs, batches, training=False, chunks=self.reference)
            with torch.no_grad():
                runner.run(self.pipeline_schedule(len(inputs), training=False))
            for batch, ref in zip(batches, runner.losses):
                batch.reference = ref
        return inputs, batches

    def train_step(self, samples: np.ndarray):
        result = super().train_step(samples)
        result.metrics = self.objective_metrics(self.last_runner.labels)
        return result

    def objective_metrics(self, batches: list[PackedBatch]) -> dict:
        """The objective's metrics, averaged over the global batch's micro-batches like the loss (every rank)."""
        names = METRICS[self.cfg.train.objective]
        if not names:
            return {}
        total = torch.zeros(len(names), dtype=torch.float64, device=self.ctx.device)
        for batch in batches:
            if batch.metrics is not None and self.ctx.tp_rank == 0:
                total += torch.stack([batch.metrics[n].double() for n in names])
        if self.ctx.world_group.size > 1:
            comm.reduce_in_place(total, self.ctx.world_group)
        return dict(zip(names, (total / (len(batches) * self.ctx.layout.dp)).tolist()))

    def stage_kwargs(self, labels: list[PackedBatch]) -> list[dict]:
        return [{"layout": b.layout} for b in labels]


