"""Per-step metrics: metrics.jsonl, TensorBoard scalars and the progress bar (rank 0 only)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


class MetricsLog:
    def __init__(self, run_dir: Path, tensorboard: bool, progress: bool, total_steps: int, start_step: int = 0):
        self.path = run_dir / "metrics.jsonl"
        self.file = self.path.open("a")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional; metrics.jsonl always exists
                self.writer = None
        self.progress = None
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[status]}"), TimeRemainingColumn())
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step, status="")
            self.progress.start()

    def log(self, record: dict) -> None:
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as exc:  # name the file: a bare write error (disk full) carries no path
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])
        if self.progress is not None and "loss" in record:
            status = (f"loss {record['loss']:.4f}  {record['tokens_per_s']:,.0f} tok/s  "
                      f"{record['model_tflops']:.3f} TFLOP/s")
            self.progress.update(self.task, completed=record["step"], status=status)

    def note(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()
        self.file.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def step_record(step: int, loss: float, lr: float, grad_norm: float, seconds: float, tokens: int, flops: float,
                world_size: int, comm_bytes: dict, applied: bool, loss_scale: Optional[float]) -> dict:
    record = {
        "step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "step_time_s": seconds,
        "tokens_per_s": tokens / seconds, "model_tflops": flops / seconds / 1e12,
        "model_tflops_per_rank": flops / seconds / 1e12 / world_size,
        **{f"comm_bytes_{name}": value for name, value in comm_bytes.items()},
    }
    if not applied:
        record["skipped"] = True
    if loss_scale is not None:
        record["loss_scale"] = loss_scale
    return record
