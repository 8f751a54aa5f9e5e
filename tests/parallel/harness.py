"""Run a few training steps of a tiny config in a given layout and collect losses and full gradients."""
from __future__ import annotations

import numpy as np

from gpt3d.config import load_config
from gpt3d.parallel.gather import gather_full
from gpt3d.train.runtime import init_runtime
from gpt3d.train.trainer import Trainer

BASE = ["model.n_layers=4", "model.d_model=64", "model.n_heads=4", "model.seq_len=32", "model.vocab_size=250",
        "model.vocab_pad_multiple=64", "train.global_batch_size=8", "train.micro_batch_size=2",
        "optim.warmup_steps=2", "optim.lr=3e-3", "train.threads=1"]


def synthetic_batches(steps: int, batch: int, seq_len: int, vocab: int, seed: int = 0) -> list[np.ndarray]:
    """Learnable token streams (a noisy repeating pattern), so the loss falls over a few steps."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        start = rng.integers(0, vocab, size=(batch, 1))
        stride = rng.integers(1, 4, size=(batch, 1))
        seq = (start + stride * np.arange(seq_len + 1)) % vocab
        noise = rng.random(seq.shape) < 0.1
        seq[noise] = rng.integers(0, vocab, size=noise.sum())
        out.append(seq.astype(np.int64))
    return out


def run(rank: int, world_size: int, overrides: list[str], steps: int, grads_after: int = 1) -> dict:
    cfg = load_config(None, ["preset=tiny-test"] + BASE + list(overrides))
    rt = init_runtime(cfg, rank, world_size, rank, world_size)
    trainer = Trainer(cfg, rt)
    batches = synthetic_batches(steps, cfg.train.global_batch_size, cfg.train.seq_len, cfg.model.vocab_size)
    losses, grads, norms = [], None, []
    for i, batch in enumerate(batches):
        result = trainer.train_step(batch)
        losses.append(result.loss)
        norms.append(result.grad_norm)
        if i + 1 == grads_after:
            trainer.sync.gather_grads()
            grads = gather_full(rt.ctx, trainer.chunks, "grad")
    params = gather_full(rt.ctx, trainer.chunks, "param")
    comm = result.comm_bytes
    if rank != 0:
        return {}
    return {"losses": losses, "grads": grads, "params": params, "norms": norms, "comm": comm}
