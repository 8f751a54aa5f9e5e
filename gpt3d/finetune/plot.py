"""Reward and KL against step, as a PNG (matplotlib's Agg backend; no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def write_reward_kl_plot(steps: Sequence[int], rewards: Sequence[float], kls: Sequence[float], path: str | Path,
                         title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6, 5))
    top.plot(steps, rewards, marker="o")
    top.set_ylabel("mean reward (reward model)")
    bottom.plot(steps, kls, marker="o", color="tab:red")
    bottom.set_ylabel("KL to reference (nats)")
    bottom.set_xlabel("step")
    if title:
        top.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
