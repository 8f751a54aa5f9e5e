"""The results of `gpt3d eval`: a printed table, results.json (written to a temporary file and renamed, so an
interrupted run never leaves a half-written file) and a PNG of accuracy against K per task (GPT-3's Figure 1.2 kind)."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def table(results: dict) -> str:
    shots = sorted({int(k) for per_k in results.values() for k in per_k})
    head = f"{'task':<24}" + "".join(f"{f'K={k}':>10}" for k in shots)
    rows = [head, "-" * len(head)]
    for task, per_k in results.items():
        cells = "".join(f"{per_k[str(k)]['accuracy'] * 100:>9.1f}%" if str(k) in per_k else f"{'':>10}" for k in shots)
        rows.append(f"{task:<24}{cells}")
    return "\n".join(rows)


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for task, per_k in results.items():
        ks = sorted(int(k) for k in per_k)
        ax.plot(ks, [per_k[str(k)]["accuracy"] * 100 for k in ks], marker="o", label=task)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("number of examples in context (K)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
