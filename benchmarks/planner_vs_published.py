"""Print the planner's predicted TFLOP/s per GPU next to Megatron-LM's published Table 1 (Narayanan et al. 2021).

    python benchmarks/planner_vs_published.py

Like with like: eq. (3) FLOPs (full recomputation) over the predicted step time, the paper's layouts, micro-batches,
interleaving and DDP overlap (gpt3d/planner/published.py). Also prints the search time for 175B on 1024 A100s.
"""
from __future__ import annotations

import time

from gpt3d.config import load_config
from gpt3d.planner.hardware import GPUS
from gpt3d.planner.performance import predict
from gpt3d.planner.published import PUBLISHED_GPU, PUBLISHED_SEQ_LEN, TABLE_1
from gpt3d.planner.search import plan


def main() -> None:
    gpu = GPUS[PUBLISHED_GPU]
    print(f"{'params':>8} {'t':>2} {'p':>3} {'v':>2} {'GPUs':>5} {'batch':>5} {'mb':>3} | {'published':>9} "
          f"{'predicted':>9} {'error':>7} | {'step s':>7} {'bubble':>6} {'TP':>5} {'DP':>5}")
    errors = []
    for row in TABLE_1:
        p = predict(row.model(), row.layout(), gpu, row.global_batch, PUBLISHED_SEQ_LEN, row.options())
        err = p.hardware_tflops_per_gpu / row.tflops_per_gpu - 1
        errors.append(err)
        t = p.time
        print(f"{row.params_billion:7.1f}B {row.tp:>2} {row.pp:>3} {row.vp:>2} {row.num_gpus:>5} {row.global_batch:>5} "
              f"{row.micro_batch:>3} | {row.tflops_per_gpu:>9.0f} {p.hardware_tflops_per_gpu:>9.1f} {err:>+7.1%} | "
              f"{p.iteration_time_s:>7.2f} {t.pp_bubble / t.total:>6.1%} {t.tp_comm / t.total:>5.1%} "
              f"{t.dp_comm_exposed / t.total:>5.1%}")
    print(f"mean error {sum(errors) / len(errors):+.1%}, max |error| {max(abs(e) for e in errors):.1%}")
    run = load_config("gpt3-175b")
    start = time.perf_counter()
    result = plan(run.model, gpu, 1024, run.train.global_batch_size, 2048, top_k=1)
    elapsed = time.perf_counter() - start
    best = result.ranked[0]
    print(f"search: gpt3-175b on 1024 x {gpu.name}: {result.candidates} layouts in {elapsed:.2f} s; best "
          f"{best.layout.label()} {best.model_tflops_per_gpu:.0f} model TFLOP/s per GPU")


if __name__ == "__main__":
    main()
