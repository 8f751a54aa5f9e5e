"""gpt3d's own Trainer at the job's layout (dp2, tp2 or pp2)."""
from __future__ import annotations

from . import common

LAYOUTS = {"dp2": (1, 1, 2), "tp2": (2, 1, 1), "pp2": (1, 2, 1)}  # (tp, pp, dp)


def train(rank: int, job: dict):
    from gpt3d.config import load_config
    from gpt3d.train.runtime import init_runtime
    from gpt3d.train.trainer import Trainer
    s = job["spec"]
    tp, pp, dp = LAYOUTS[job["layout"]]
    cfg = load_config(None, [
        "preset=tiny-test", f"model.n_layers={s['layers']}", f"model.d_model={s['d_model']}",
        f"model.n_heads={s['heads']}", f"model.d_ff={4 * s['d_model']}", f"model.seq_len={s['seq']}",
        f"model.vocab_size={s['vocab']}", "model.vocab_pad_multiple=128", "model.activation=gelu_tanh",
        "model.tie_embeddings=false", "model.hidden_dropout=0.0", "model.attn_dropout=0.0",
        f"train.global_batch_size={job['global_batch']}", f"train.micro_batch_size={job['micro_batch']}",
        f"train.dtype={job['dtype']}", f"train.threads={job['threads']}", f"train.seed={common.SEED}",
        f"train.steps={job['steps'] + 1}", f"optim.lr={job['lr']}", "optim.min_lr_ratio=1.0", "optim.warmup_steps=0",
        "optim.weight_decay=0.0", "optim.grad_clip=0.0", f"parallel.tp={tp}", f"parallel.pp={pp}",
        f"parallel.dp={dp}", *job.get("gpt3d_overrides", {}).get(job["layout"], [])])
    rt = init_runtime(cfg, rank, job["world"], rank, job["world"])
    trainer = Trainer(cfg, rt)
    return common.timed_steps(lambda i, tokens: trainer.train_step(tokens.numpy()).loss, job)
