"""What every framework's run shares: the job (model spec, layout, dtype, data, initial weights), rank setup, the step
loop with its timing, and the per-rank result file (losses, step times, peak RSS)."""
from __future__ import annotations

import json
import os
import resource
import time

import numpy as np
import torch

from gpt3d.heap import keep_freed_memory
from gpt3d.profiler.gemm_floor import linear_gemm_seconds

SEED = 1234  # gpt3d's train.seed: its layout-independent init is the initial weights every framework starts from


def model_config(job: dict):
    """The gpt3d ModelConfig of the benchmark's GPT (untied head: every peer's pipeline supports it plainly)."""
    from gpt3d.config.model import ModelConfig
    s = job["spec"]
    return ModelConfig(n_layers=s["layers"], d_model=s["d_model"], n_heads=s["heads"], seq_len=s["seq"],
                       vocab_size=s["vocab"], vocab_pad_multiple=128, activation="gelu_tanh", hidden_dropout=0.0,
                       attn_dropout=0.0, tie_embeddings=False)


def initial_state_dict(job: dict) -> dict[str, torch.Tensor]:
    """gpt3d's full initial state dict (fp32), as written by the driver."""
    return torch.load(job["weights"], weights_only=True)


def batches(job: dict) -> np.ndarray:
    """[steps, global batch, seq + 1] int64 tokens, the same for every framework."""
    return np.load(job["tokens"])


def setup_rank(rank: int, job: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job["port"]), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(job["world"]), LOCAL_WORLD_SIZE=str(job["world"]))
    torch.set_num_threads(job["threads"])
    keep_freed_memory()  # every framework's ranks, as gpt3d's CPU runtime does for its own (gpt3d/heap.py)
    torch.manual_seed(0)


def compute_dtype(job: dict) -> torch.dtype:
    return torch.bfloat16 if job["dtype"] == "bf16" else torch.float32


def linear_widths(job: dict) -> set[int]:
    """The linear layers' and the head's widths as one rank holds them (halved for tensor parallelism)."""
    s = job["spec"]
    widths = {s["d_model"], 3 * s["d_model"], 4 * s["d_model"], s["vocab"]}
    return widths | {w // 2 for w in widths} if job["layout"] == "tp2" else widths


def timed_steps(step, job: dict) -> tuple[list[float], list[float]]:
    """Run step(i, tokens[i]) -> global mean loss for every step; (losses, seconds per step), all ranks in lockstep."""
    data = batches(job)
    losses, seconds = [], []
    for i in range(len(data)):
        torch.distributed.barrier()
        profiling = job.get("profile") and i == len(data) - 1
        profiler = (torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
                    if profiling else None)
        if profiler is not None:
            profiler.start()
        start = time.perf_counter()
        losses.append(float(step(i, torch.from_numpy(data[i]))))
        torch.distributed.barrier()
        seconds.append(time.perf_counter() - start)
        if profiler is not None:
            profiler.stop()
            table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60)
            rank = torch.distributed.get_rank()
            by_shape = profiler.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=40, max_shapes_column_width=70)
            gemm_s = linear_gemm_seconds(profiler, job["micro_batch"] * job["spec"]["seq"], linear_widths(job))
            with open(os.path.join(job["out"], f"profile-rank{rank}.txt"), "w") as fh:
                fh.write(f"linear-layer and head GEMMs (gpt3d/profiler/gemm_floor.py): {gemm_s * 1e3:.1f} ms\n\n"
                         + table + "\n\nBy input shape:\n" + by_shape)
            with open(os.path.join(job["out"], f"gemm-rank{rank}.json"), "w") as fh:
                json.dump({"linear_gemm_s": gemm_s}, fh)
    return losses, seconds


def write_result(rank: int, job: dict, losses: list[float], seconds: list[float]) -> None:
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open(os.path.join(job["out"], f"rank{rank}.json"), "w") as fh:
        json.dump({"losses": losses, "seconds": seconds, "peak_rss": peak_rss}, fh)


def dp_share(tokens: torch.Tensor, rank: int, dp: int) -> torch.Tensor:
    """This data-parallel rank's contiguous share of the global batch."""
    per = tokens.shape[0] // dp
    return tokens[rank * per:(rank + 1) * per]


def global_mean(loss: torch.Tensor) -> float:
    """Mean of a per-rank mean loss over all ranks (equal token counts per rank)."""
    t = loss.detach().float().clone()
    torch.distributed.all_reduce(t)
    return t.item() / torch.distributed.get_world_size()
