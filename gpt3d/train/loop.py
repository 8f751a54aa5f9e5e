"""The training loop of one rank: data, steps, evaluation, metrics, checkpoints, preemption, hang reports."""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import numpy as np

from gpt3d.config.run import RunConfig, save_config
from gpt3d.model.flops import megatron_model_flops

from .metrics import MetricsLog, step_record
from .runtime import init_runtime
from .trainer import Trainer


def dataset_sizes(cfg: RunConfig) -> dict[str, int]:
    """Samples each split must supply: every step's global batch, and the fixed validation batches (the same ones at
    every evaluation, so validation losses are comparable)."""
    G = cfg.train.global_batch_size
    valid = cfg.train.eval_iters * G if cfg.train.eval_interval else 0
    return {"train": cfg.train.steps * G, "valid": valid, "test": 0}


def build_data(cfg: RunConfig):
    if cfg.train.objective == "ppo":  # alignment: prompts (gpt3d/align/data.py)
        from gpt3d.align.data import build_prompts
        return build_prompts(cfg)
    if cfg.train.objective != "pretrain":  # fine-tuning: packed JSONL examples (gpt3d/finetune/data.py)
        from gpt3d.finetune.data import build_finetune_data
        return build_finetune_data(cfg)
    from gpt3d.data.gpt_dataset import build_datasets
    return build_datasets(cfg.data, cfg.train.seq_len, cfg.train.seed, dataset_sizes(cfg), cfg.model.vocab_size,
                          cfg.data.cache_dir)


def make_trainer(cfg: RunConfig, rt) -> Trainer:
    """The trainer of train.objective: pre-training, or a fine-tuning objective (gpt3d/finetune/trainer.py)."""
    if cfg.train.objective == "pretrain":
        return Trainer(cfg, rt)
    if cfg.train.objective == "ppo":
        from gpt3d.align.trainer import AlignTrainer
        return AlignTrainer(cfg, rt)
    from gpt3d.finetune.trainer import ObjectiveTrainer
    return ObjectiveTrainer(cfg, rt)


def global_batch(dataset, step: int, size: int) -> np.ndarray:
    """Global batch `step` = samples [step * size, (step + 1) * size): the position to resume from is the step."""
    return np.stack([dataset[i] for i in range(step * size, (step + 1) * size)])


def report_failure(trainer_ctx, exc: BaseException) -> None:
    """A collective failed or timed out: say where this rank was, so a hang is diagnosable, then exit non-zero."""
    ops = ", ".join(f"{g.name}: {g.current_op or '-'}" for g in trainer_ctx.groups())
    line = (f"gpt3d: {trainer_ctx.coords_text()} failed during '{trainer_ctx.schedule_step or 'setup'}' "
            f"(last operation per group: {ops}): {type(exc).__name__}: {exc}")
    # One write with its newline: the launcher may kill this rank at any moment once a peer has died, and a line cut
    # before its newline would run into the launcher's own one-line summary.
    sys.stderr.flush()
    os.write(sys.stderr.fileno(), (" ".join(line.split()) + "\n").encode())


def train_rank(cfg: RunConfig, run_dir: str, rank: int, world_size: int, local_rank: int,
               local_world_size: int) -> list[dict]:
    """Train on this rank; returns the step records (identical on every rank)."""
    from gpt3d.slurm.preemption import PreemptionHandler
    run_dir = Path(run_dir)
    rt = init_runtime(cfg, rank, world_size, local_rank, local_world_size)
    ctx = rt.ctx
    handler = PreemptionHandler().install()  # SIGUSR1 / SIGTERM: finish the step, save, requeue, exit 0
    try:
        return _train(cfg, run_dir, rt, handler)
    except OSError as exc:  # disk full, read-only run directory: one line, and no partial checkpoint left behind
        from gpt3d.checkpoint.store import CHECKPOINTS, remove_partial_saves
        from gpt3d.oserror import os_error_line
        if rank == 0:
            remove_partial_saves(run_dir / CHECKPOINTS)
        print(f"gpt3d train: error: {os_error_line(exc)} (rank {rank})", file=sys.stderr, flush=True)
        os._exit(1)
    except Exception as exc:  # noqa: BLE001 - report where, then exit without hanging in teardown
        report_failure(ctx, exc)
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    finally:
        handler.uninstall()


def resume(cfg: RunConfig, run_dir: Path, trainer: Trainer) -> int:
    """Load the checkpoint checkpoint.resume selects (if any) into the trainer; returns the step to continue from."""
    from gpt3d.checkpoint import Checkpoint, load_into_trainer, resume_path
    path = resume_path(cfg.checkpoint.resume, run_dir)
    if path is None:
        return 0
    summary = load_into_trainer(trainer, Checkpoint(path))
    if trainer.ctx.rank == 0:
        moments = "with optimizer state" if summary["optimizer"] else "with fresh Adam moments (step count 0)"
        rng = "" if summary["rng"] else "; new layout: dropout RNG streams re-seeded"
        print(f"gpt3d: resumed from {path} at step {summary['step']} {moments}{rng}", flush=True)
    return summary["step"]


def _train(cfg: RunConfig, run_dir: Path, rt, handler=None) -> list[dict]:
    from gpt3d.checkpoint import CheckpointSaver
    from gpt3d.slurm.preemption import requeue_job
    ctx = rt.ctx
    is_logger = ctx.rank == 0
    data = build_data(cfg)
    trainer = make_trainer(cfg, rt)
    saver = CheckpointSaver(trainer, run_dir)
    start = resume(cfg, run_dir, trainer)
    G, seq = cfg.train.global_batch_size, cfg.train.seq_len
    flops = megatron_model_flops(cfg.model, G, seq)
    log: Optional[MetricsLog] = None
    if is_logger:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        log = MetricsLog(run_dir, cfg.train.tensorboard, cfg.train.progress, cfg.train.steps, start)
    records = []
    try:
        for step in range(start, cfg.train.steps):
            result = trainer.train_step(global_batch(data["train"], step, G))
            record = step_record(step + 1, result.loss, result.lr, result.grad_norm, result.seconds, G * seq, flops,
                                 ctx.layout.world_size, result.comm_bytes, result.applied,
                                 trainer.scaler.scale if trainer.scaler.enabled else None)
            record.update(result.metrics)
            if cfg.train.eval_interval and ((step + 1) % cfg.train.eval_interval == 0 or
                                            step + 1 == cfg.train.steps):
                losses = [trainer.eval_loss(global_batch(data["valid"], i, G))
                          for i in range(cfg.train.eval_iters)]
                record["val_loss"] = float(np.mean(losses))
                if log is not None:
                    log.note(f"step {step + 1}: validation loss {record['val_loss']:.4f}")
            records.append(record)
            if log is not None and ((step + 1) % cfg.train.log_interval == 0 or step + 1 == cfg.train.steps):
                log.log(record)
            if saver.due(step + 1):
                saver.save(step + 1)
            if handler is not None and handler.stop_requested(ctx.world_group.pg):
                if cfg.checkpoint.save_on_exit:
                    saver.save(step + 1)
                saver.finish()
                requeued = requeue_job() if ctx.rank == 0 else False
                if log is not None:
                    log.note(f"gpt3d: {handler.signal_received.name if handler.signal_received else 'another rank received a stop signal'}: stopped "
                             f"after step {step + 1}" + (", saved" if cfg.checkpoint.save_on_exit else "")
                             + (", job requeued" if requeued else ""))
                return records
        if cfg.checkpoint.save_on_exit and start < cfg.train.steps:
            saver.save(cfg.train.steps)
        saver.finish()
    finally:
        if log is not None:
            log.close()
    if is_logger and cfg.train.objective == "ppo":  # reward and KL against step (gpt3d/align)
        from gpt3d.align.plot import write_plot
        write_plot(run_dir)
    return records
