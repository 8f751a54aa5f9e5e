"""Run by test_hang_report.py: a 2-rank training where rank 1 stops participating after the first step.

Both ranks train the tiny config; failures are handled as the training loop does (gpt3d.train.loop.report_failure,
then exit 1). Rank 1 completes step 1, then sleeps instead of joining step 2, so rank 0 waits in step 2's first
communication until parallel.comm_timeout_s expires.

    python tests/parallel/hang_worker.py RUN_DIR KEY=VALUE ...
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parallel.harness import make_config, synthetic_batches  # noqa: E402

from gpt3d.launch.spawn import spawn  # noqa: E402
from gpt3d.train.loop import report_failure  # noqa: E402
from gpt3d.train.runtime import init_runtime  # noqa: E402
from gpt3d.train.trainer import Trainer  # noqa: E402

WORLD = 2
STEPS = 3
SILENT_FROM_STEP = 1  # 0-based: rank 1 runs step 0 only


def file_barrier(directory: Path, rank: int, world_size: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"ready.{rank}").touch()
    while len(list(directory.glob("ready.*"))) < world_size:
        time.sleep(0.05)


def rank_main(rank: int, world_size: int, overrides: list[str], run_dir: str) -> None:
    cfg = make_config(overrides)
    batches = synthetic_batches(STEPS, cfg.train.global_batch_size, cfg.train.seq_len, cfg.model.vocab_size)
    # File barriers (no timeout of their own): both ranks start the rendezvous, and then the first step, together, so
    # the short timeout measures only the silence of rank 1, not the start-up skew of a loaded machine.
    file_barrier(Path(run_dir) / "started", rank, world_size)
    rt = init_runtime(cfg, rank, world_size, rank, world_size)
    try:
        trainer = Trainer(cfg, rt)
        file_barrier(Path(run_dir) / "built", rank, world_size)
        for step, batch in enumerate(batches):
            if rank == 1 and step == SILENT_FROM_STEP:
                print(f"rank 1: stops participating before step {step + 1}", file=sys.stderr, flush=True)
                time.sleep(600)
            trainer.train_step(batch)
            if rank == 0:
                print(f"rank 0: step {step + 1} done", file=sys.stderr, flush=True)
    except Exception as exc:  # noqa: BLE001 - what train_rank does: report where, then exit without hanging
        report_failure(rt.ctx, exc)
        os._exit(1)


if __name__ == "__main__":
    spawn(rank_main, WORLD, sys.argv[2:], sys.argv[1])
