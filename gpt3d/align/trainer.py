"""PPO-ptx training steps. Each step: sample completions of the step's prompts with gpt3d's inference engine (KV
cache) running the current policy in this rank's tensor x pipeline layout; score them with the frozen reward model;
take the policy's and the frozen reference's log-probabilities and the values (forward-only pipeline passes); build
KL-penalised rewards, GAE advantages (whitened over the global batch) and returns on the last stage; then
`finetune.ppo.epochs` optimizer steps of the clipped PPO loss, plus the ptx micro-batches of pretraining data."""
from __future__ import annotations

import time

import numpy as np
import torch

from gpt3d.config.generate import SamplingConfig
from gpt3d.config.run import RunConfig
from gpt3d.finetune.objectives import PackedBatch, objective_for, reward_scores
from gpt3d.finetune.trainer import ObjectiveTrainer, set_objective
from gpt3d.parallel import comm
from gpt3d.parallel.build import build_model_chunks
from gpt3d.parallel.pipeline.p2p import P2PShape
from gpt3d.parallel.pipeline.runner import StageRunner
from gpt3d.train.loop import global_batch
from gpt3d.train.runtime import Runtime

from .data import build_pretraining, prompt_of, pretraining_rows, ptx_batch_size, rollout_rows
from .engine import rollout_engine, sample
from .objective import METRICS, Pretraining, Rollout, make_reference_logps, make_rollout_stats
from .rollouts import attach_rollouts


class AlignTrainer(ObjectiveTrainer):
    def __init__(self, cfg: RunConfig, runtime: Runtime):
        from gpt3d.data.gpt_dataset import tokenizer_for
        from gpt3d.finetune.weights import load_weights, open_checkpoint
        super().__init__(cfg, runtime)
        self.objective = objective_for(cfg)
        ppo = self.ppo = cfg.finetune.ppo
        self.reference = self.frozen_copy(ppo.reference or cfg.finetune.init_from)
        set_objective(self.reference, make_reference_logps(ppo.temperature))
        ckpt = open_checkpoint(ppo.reward_model)
        self.reward_cfg = ckpt.model_config()
        ckpt.close()
        self.reward = build_model_chunks(self.reward_cfg, cfg.parallel, self.ctx, cfg.train.seed, self.tracker)
        load_weights(self.reward, ppo.reward_model)
        for chunk in self.reward:
            chunk.eval().requires_grad_(False)
        set_objective(self.reward, reward_scores)
        self.pad_id = tokenizer_for(cfg.data, cfg.data.cache_dir).eod_id
        self.pretraining = build_pretraining(cfg) if ppo.ptx_coef > 0 else None
        self.replica = self.ctx.replica_group()  # the ranks that share this replica's rollouts
        self.current: tuple[list, list[PackedBatch]] | None = None

    # -- rollouts -------------------------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], first: int, iteration: int):
        """This replica's prompts (global batch positions first, first + 1, ...) sampled by the current policy; the
        sampling noise is a function of (seed, step, batch position, token) only, so no layout changes a token."""
        engine = rollout_engine(self.chunks[0], self.ctx, self.cfg.model)
        sampling = SamplingConfig(max_new_tokens=self.ppo.max_new_tokens, temperature=self.ppo.temperature,
                                  seed=self.cfg.train.seed * 1_000_003 + iteration, eos_token_id=self.pad_id)
        return sample(engine, self.replica, prompts, sampling, range(first, first + len(prompts)))

    def forward_only(self, chunks, batches: list[PackedBatch], d_model: int) -> list[torch.Tensor]:
        """The last stage's objective outputs of a frozen pass over `batches` (empty on other stages)."""
        inputs = [b.tokens for b in batches]
        shape = self.p2p_shape(inputs[0].shape[0], inputs[0].shape[1]).shape
        runner = StageRunner(self.ctx, chunks, inputs, batches, P2PShape((*shape[:2], d_model), self.dtype),
                             lambda c: None, stage_kwargs=self.stage_kwargs(batches))
        with torch.no_grad():
            runner.run(self.pipeline_schedule(len(inputs), training=False))
        return runner.losses

    def rollouts(self, samples: np.ndarray, iteration: int) -> tuple[list, list[PackedBatch]]:
        per_dp, mb = len(samples) // self.ctx.layout.dp, self.cfg.train.micro_batch_size
        first = self.ctx.dp_rank * per_dp
        prompts = [prompt_of(row) for row in samples[first:first + per_dp]]
        completions = self.generate(prompts, first, iteration)
        rows = rollout_rows(prompts, completions, self.cfg.train.seq_len, self.pad_id)
        batches = [PackedBatch.from_rows(rows[i:i + mb], self.ctx.device) for i in range(0, per_dp, mb)]
        for chunk in self.chunks:
            chunk.eval()
        set_objective(self.chunks, make_rollout_stats(self.ppo.temperature))
        policy = self.forward_only(self.chunks, batches, self.cfg.model.d_model)
        set_objective(self.chunks, self.objective)
        reference = self.forward_only(self.reference, batches, self.cfg.model.d_model)
        scores = self.forward_only(self.reward, batches, self.reward_cfg.d_model)
        ptx = self.pretraining_batches(iteration)
        weight = (len(batches) + len(ptx)) / len(batches)
        if self.ctx.is_last_stage:
            attach_rollouts(batches, policy, reference, scores, weight, self.ppo, self.ctx.dp_group)
        return [b.tokens for b in batches + ptx], batches + ptx

    def pretraining_batches(self, iteration: int) -> list[PackedBatch]:
        if self.pretraining is None:
            return []
        size = ptx_batch_size(self.cfg)
        per_dp, mb = size // self.ctx.layout.dp, self.cfg.train.micro_batch_size
        rows = pretraining_rows(global_batch(self.pretraining, iteration, size)[self.ctx.dp_rank * per_dp:][:per_dp])
        batches = [PackedBatch.from_rows(rows[i:i + mb], self.ctx.device) for i in range(0, per_dp, mb)]
        ppo_micro = self.cfg.train.global_batch_size // self.ctx.layout.dp // mb
        for b in batches:
            b.align = Pretraining(self.ppo.ptx_coef * (ppo_micro + len(batches)) / len(batches))
        return batches

    # -- steps ----------------------------------------------------------------------------------------------------
    def micro_batches(self, samples: np.ndarray):
        assert self.current is not None, "PPO micro-batches are made by train_step from its rollouts"
        return self.current

    def train_step(self, samples: np.ndarray):
        start = time.perf_counter()
        iteration = self.step_index
        self.current = self.rollouts(samples, iteration)
        results = []
        for _ in range(self.ppo.epochs):
            self.step_index = iteration  # one learning rate per PPO step
            results.append(super().train_step(samples))
        self.current = None
        result = results[-1]
        result.loss = float(np.mean([r.loss for r in results]))
        result.metrics = {k: float(np.mean([r.metrics[k] for r in results])) for k in METRICS}
        result.seconds = time.perf_counter() - start
        return result

    def objective_metrics(self, batches: list[PackedBatch]) -> dict:
        """METRICS averaged over the global batch's PPO micro-batches (every rank)."""
        total = torch.zeros(len(METRICS), dtype=torch.float64, device=self.ctx.device)
        rollouts = [b for b in batches if isinstance(b.align, Rollout)] if self.ctx.is_last_stage else []
        for batch in rollouts:
            if self.ctx.tp_rank == 0:
                total += torch.stack([batch.metrics[n].double() for n in METRICS])
        comm.all_reduce(total, self.ctx.world_group, "ppo_metrics")
        count = self.cfg.train.global_batch_size // self.cfg.train.micro_batch_size
        return dict(zip(METRICS, (total / count).tolist()))
