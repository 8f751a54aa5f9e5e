"""Run `gpt3d profile` through its CLI entry (argparse + run), as a user would, and read what it wrote."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from gpt3d.profiler import cli

# One thread per rank: the test machine has 2 cores shared by every rank (and by other jobs).
THREADS = "train.threads=1"


def profile(out: Path, *argv: str) -> tuple[int, dict]:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    rc = cli.run(parser.parse_args([*argv, "--out", str(out), "--set", THREADS]))
    report = json.loads((out / "profile.json").read_text()) if rc == 0 else {}
    return rc, report


def accounting_error(rank: dict) -> float:
    """|sum of layer times - (step - exposed communication - bubble)| relative to the latter."""
    expected = rank["step_s"] - rank["comm_exposed_s"] - rank["bubble_s"]
    return abs(rank["layers_s"] - expected) / expected


def megatron_paper_flops(batch: int, seq: int, layers: int, hidden: int, padded_vocab: int) -> float:
    """Training FLOPs of one step without recomputation, as printed in Narayanan et al. (2021), "Efficient Large-Scale
    Language Model Training on GPU Clusters Using Megatron-LM": 72 B s l h^2 (1 + s/(6h) + V/(12 l h)). Written out
    here, apart from gpt3d.model.flops, so the profiler is checked against the paper and not against itself."""
    return 72 * batch * seq * layers * hidden ** 2 * (1 + seq / (6 * hidden) + padded_vocab / (12 * layers * hidden))
