"""Measured results of the GPU check: one JSON object per line in $GPT3D_GPU_RECORDS (set by run.sh), also printed.
tests/gpu/report.py turns them into the table and $OUT/gpu_report.json."""
from __future__ import annotations

import json
import os


def record(kind: str, **fields) -> None:
    line = json.dumps({"kind": kind, **fields})
    print(line)
    path = os.environ.get("GPT3D_GPU_RECORDS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
