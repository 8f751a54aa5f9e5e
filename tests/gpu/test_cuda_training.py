"""Training on the GPU through the public command (`gpt3d train`), so it follows whatever the trainer does on main.

- 20 steps of the gpt3-small preset (12 layers, d_model 768, T = 2048, dense/sparse alternating, fused CUDA kernels)
  in bf16 on one GPU: the loss falls; tokens/s and MFU against 989 TFLOP/s (H100/H200 dense bf16) are recorded.
- With two or more GPUs: a 2-rank NCCL tensor-parallel run (TP2) logs the single-rank run's losses and gradient norms
  (fp32, so the only difference is the order of the TP sums).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from gpt3d.train.metrics import read_metrics

from .conftest import gpu_count, requires_cuda
from .records import record

pytestmark = requires_cuda

REPO = Path(__file__).resolve().parents[2]
PEAK_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16, the vendor's datasheet
STEPS = 20
# gpt3-small at its own sequence length; a smaller global batch than the paper's 0.5M tokens keeps the check short.
SMALL = ["--set", "train.device=cuda", "--set", "train.global_batch_size=32", "--micro-batch", "8",
         "--set", "train.eval_interval=0", "--set", "train.progress=false", "--set", "train.tensorboard=false"]


def train(out: Path, steps: int, *flags: str) -> list[dict]:
    cache = os.environ.get("GPT3D_GPU_CACHE", str(out.parent / "cache"))
    cmd = [sys.executable, "-m", "gpt3d", "train", "gpt3-small", "--steps", str(steps), "--out", str(out),
           "--set", f"data.cache_dir={cache}", *SMALL, *flags]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    records = [r for r in read_metrics(out) if "loss" in r and "step" in r]
    assert [r["step"] for r in records] == list(range(1, steps + 1)), records
    return records


def test_gpt3_small_bf16_single_gpu_loss_falls(tmp_path):
    records = train(tmp_path / "bf16", STEPS, "--set", "train.dtype=bf16")
    losses = [r["loss"] for r in records]
    assert all(l == l and l < 20 for l in losses), f"non-finite or exploding loss: {losses}"
    first, last = losses[0], statistics.mean(losses[-5:])
    steady = records[3:]  # steps 1-3 include CUDA/allocator warm-up
    tflops = statistics.median(r["model_tflops"] for r in steady)
    record("train", run="gpt3-small bf16, 1 GPU", steps=STEPS, first_loss=first, last5_mean_loss=last,
           tokens_per_s=statistics.median(r["tokens_per_s"] for r in steady), model_tflops=tflops,
           mfu=tflops / PEAK_BF16_TFLOPS, step_time_s=statistics.median(r["step_time_s"] for r in steady))
    assert last < first - 1.0, f"the loss did not fall over {STEPS} steps: {losses}"


@pytest.mark.skipif(gpu_count() < 2, reason=f"TP2 over NCCL needs 2 GPUs; {gpu_count()} visible")
def test_tp2_nccl_matches_single_gpu(tmp_path):
    steps = 5
    fp32 = ["--set", "train.dtype=fp32"]
    single = train(tmp_path / "tp1", steps, *fp32)
    tp2 = train(tmp_path / "tp2", steps, *fp32, "--tp", "2")
    record("train", run="gpt3-small fp32, TP2 over NCCL vs 1 GPU", steps=steps,
           max_loss_rel_diff=max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(tp2, single)))
    assert [r["loss"] for r in tp2] == pytest.approx([r["loss"] for r in single], rel=1e-4)
    assert [r["grad_norm"] for r in tp2] == pytest.approx([r["grad_norm"] for r in single], rel=1e-3)
    assert tp2[0]["comm_bytes_tp"] > 0, "the TP2 run did not communicate over its TP group"
