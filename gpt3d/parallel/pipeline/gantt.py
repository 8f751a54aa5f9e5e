"""Gantt chart of a simulated schedule: one lane per pipeline rank, F / B / W boxes labelled with the micro-batch."""
from __future__ import annotations

from pathlib import Path

from .simulator import Simulation

COLORS = {"F": "#4C72B0", "B": "#DD8452", "W": "#55A868"}


def draw_gantt(sim: Simulation, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = sim.schedule
    fig, ax = plt.subplots(figsize=(max(8.0, min(40.0, 0.2 * sim.makespan / max(sim.costs.forward, 1e-9) + 4)),
                                    1.2 + 0.5 * s.pp))
    compute_spans = [(a, start, end) for lane in sim.spans for a, start, end in lane if a.kind in COLORS]
    label = len(compute_spans) <= 400
    for rank, lane in enumerate(sim.spans):
        for a, start, end in lane:
            if a.kind not in COLORS:
                continue
            ax.barh(rank, end - start, left=start, color=COLORS[a.kind], edgecolor="black", linewidth=0.3,
                    alpha=1.0 if a.chunk == 0 else 0.55)
            if label:
                ax.text((start + end) / 2, rank, str(a.mb), ha="center", va="center", fontsize=6)
    ax.set_yticks(range(s.pp))
    ax.set_yticklabels([f"rank {r} (stages {', '.join(map(str, s.placement[r]))})" for r in range(s.pp)], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time (cost units; F = forward, B = input gradient" +
                  (", W = weight gradient" if s.split_backward else " + weight gradient") +
                  "; lighter = chunk 1; number = micro-batch)")
    ax.set_title(f"{s.name}: pp={s.pp}, vp={s.vp}, m={s.num_micro}: bubble {sim.bubble:.1%}, "
                 f"peak activations {max(sim.peak_activations):g} micro-batches of a stage")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for k, c in COLORS.items() if k != "W" or s.split_backward]
    ax.legend(handles, [k for k in COLORS if k != "W" or s.split_backward], loc="upper left",
              bbox_to_anchor=(1.0, 1.0), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
