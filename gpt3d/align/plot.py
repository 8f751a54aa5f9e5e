"""RUN/reward_kl.png: reward and KL against step from a PPO run's metrics.jsonl (written by rank 0 at the end)."""
from __future__ import annotations

import json
from pathlib import Path

PLOT = "reward_kl.png"


def write_plot(run_dir: Path) -> Path | None:
    from gpt3d.finetune.plot import write_reward_kl_plot
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return None
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    records = [r for r in records if "reward" in r]
    if not records:
        return None
    return write_reward_kl_plot([r["step"] for r in records], [r["reward"] for r in records],
                                [r["kl"] for r in records], run_dir / PLOT, "PPO")
