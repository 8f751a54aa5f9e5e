"""profile.png: stacked forward/backward/recompute time per layer, and the pipeline schedule of one measured step on
every rank (StageRunner events; all ranks start the step after a barrier, so their clocks share one origin)."""
from __future__ import annotations

from pathlib import Path

PHASE_COLORS = {"forward": "#4C72B0", "backward": "#DD8452", "recompute": "#55A868"}
EVENT_COLORS = {"F": PHASE_COLORS["forward"], "B": PHASE_COLORS["backward"], "W": PHASE_COLORS["recompute"]}


def write_plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report["layers"]
    timeline = sorted(report["timeline"], key=lambda t: (t["stage"], t["tp_rank"], t["dp_rank"]))
    fig, (bars, lanes) = plt.subplots(2, 1, figsize=(max(8.0, 0.28 * len(layers) + 2), 4 + 0.45 * len(timeline) + 3),
                                      gridspec_kw={"height_ratios": [3, max(1.2, 0.45 * len(timeline))]})
    x = list(range(len(layers)))
    bottom = [0.0] * len(layers)
    for phase, color in PHASE_COLORS.items():
        values = [e[f"{phase}_s"] * 1e3 for e in layers]
        if phase == "recompute" and not any(values):
            continue
        bars.bar(x, values, bottom=bottom, color=color, label=phase, width=0.8)
        bottom = [b + v for b, v in zip(bottom, values)]
    bars.set_xticks(x)
    bars.set_xticklabels([e["name"] for e in layers], rotation=90, fontsize=7)
    bars.set_ylabel("ms per step")
    lay = report["layout"]
    bars.set_title(f"{report['config']}: time per layer (tp={lay['tp']} pp={lay['pp']} dp={lay['dp']} vp={lay['vp']}, "
                   f"recompute={lay['recompute']})")
    bars.legend(loc="upper right")

    labels = []
    for row, lane in enumerate(timeline):
        for kind, chunk, mb, start, end in lane["events"]:
            lanes.barh(row, (end - start) * 1e3, left=start * 1e3, color=EVENT_COLORS[kind], edgecolor="black",
                       linewidth=0.3, alpha=1.0 if chunk % 2 == 0 else 0.6)
            if len(lane["events"]) <= 64:
                lanes.text((start + end) / 2 * 1e3, row, str(mb), ha="center", va="center", fontsize=6)
        labels.append(f"stage {lane['stage']} (rank {lane['rank']})")
    lanes.set_yticks(range(len(timeline)))
    lanes.set_yticklabels(labels, fontsize=8)
    lanes.invert_yaxis()
    lanes.set_xlabel("ms since step start (F = forward, B = backward, W = weight gradient, number = micro-batch)")
    lanes.set_title("pipeline schedule of the last measured step")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in EVENT_COLORS.values()]
    lanes.legend(handles, ["forward", "backward", "weight gradient (W)"], loc="upper left", bbox_to_anchor=(1.0, 1.0),
                 fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
