"""A bf16 run tracks the fp32 run over 200 optimizer steps.

Sizes: the parallel tests' tiny-test model (tests/parallel/harness.py BASE: d_model 64, seq 32, vocab 250) with 2
layers and one micro-batch of 8 sequences per step, so 2 x 200 steps take seconds; the `tiny` preset (d_model 128,
seq 128, vocab 4096) needs minutes for the same on 2 cores. The loss falls from 5.5 to ~2.4, a real trajectory.

Tolerance. bf16 rounds weights, activations and gradients to 8 significant bits (unit roundoff u = 2^-8): each logit
moves by ~u relative, and the loss, a mean over 256 tokens, moves by much less. The runs share data and masters start
equal (the bf16 master is the rounded fp32 init), so the trajectories stay together unless rounding compounds:
- every step's loss within u relative (observed at most 7.3e-4);
- the mean loss of every 20-step window within u/4 relative (observed at most 1.9e-4): no drift over 200 steps.
"""
import numpy as np

from tests.parallel.harness import make_config, synthetic_batches

U = 2.0 ** -8
STEPS = 200
WINDOW = 20


def losses(dtype: str) -> np.ndarray:
    from gpt3d.train.runtime import init_runtime
    from gpt3d.train.trainer import Trainer
    cfg = make_config([f"train.dtype={dtype}", f"train.steps={STEPS}", "optim.warmup_steps=20",
                       "train.micro_batch_size=8", "model.n_layers=2"])
    trainer = Trainer(cfg, init_runtime(cfg, 0, 1, 0, 1))
    batches = synthetic_batches(STEPS, cfg.train.global_batch_size, cfg.train.seq_len, cfg.model.vocab_size)
    return np.array([trainer.train_step(batch).loss for batch in batches])


def test_bf16_tracks_fp32_for_200_steps():
    fp32, bf16 = losses("fp32"), losses("bf16")
    assert fp32[-WINDOW:].mean() < fp32[0] - 2.0  # a real trajectory
    assert not np.array_equal(fp32, bf16)  # bf16 really ran
    step_rel = np.abs(bf16 - fp32) / fp32
    assert step_rel.max() <= U, f"step {step_rel.argmax() + 1}: relative difference {step_rel.max():.2e}"
    window_fp32, window_bf16 = fp32.reshape(-1, WINDOW).mean(1), bf16.reshape(-1, WINDOW).mean(1)
    window_rel = np.abs(window_bf16 - window_fp32) / window_fp32
    assert window_rel.max() <= U / 4, f"window {window_rel.argmax()}: relative difference {window_rel.max():.2e}"
