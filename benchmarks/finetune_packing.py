"""SFT packing benchmark: learned (completion) tokens per second with examples packed several per sequence (positions
reset, per-example attention mask) versus one example per sequence, padded (the baseline, at its best: the smallest
sequence length that holds the longest example, so it pads no more than it must). Same model, data, batch size and
thread count, measured in the same run; one process.

    python benchmarks/finetune_packing.py [--steps 10] [--examples 512] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpt3d.config import load_config  # noqa: E402
from gpt3d.data.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402
from gpt3d.finetune.examples import Encoders  # noqa: E402
from gpt3d.finetune.data import LABELS, build_finetune_data  # noqa: E402
from gpt3d.finetune.trainer import ObjectiveTrainer  # noqa: E402
from gpt3d.train.loop import global_batch  # noqa: E402
from gpt3d.train.runtime import init_runtime  # noqa: E402


def write_data(root: Path, n: int) -> tuple[str, str]:
    rng = random.Random(0)
    letters = "abcdefgh "
    text = "".join(rng.choice(letters) for _ in range(20000))
    train_tokenizer([text], 512, str(root / "tok"))
    rows = [{"prompt": "".join(rng.choice(letters) for _ in range(rng.randint(8, 60))),
             "completion": "".join(rng.choice(letters) for _ in range(rng.randint(4, 120)))} for _ in range(n)]
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root / "tok"), str(root / "sft.jsonl")


class Run:
    """One configuration's trainer and data; `step()` times one optimizer step."""

    def __init__(self, overrides: list[str]):
        self.cfg = load_config(None, overrides)
        self.trainer = ObjectiveTrainer(self.cfg, init_runtime(self.cfg, 0, 1, 0, 1))
        self.data = build_finetune_data(self.cfg)["train"]
        self.index, self.times, self.learned = 0, [], []

    def step(self) -> None:
        batch = global_batch(self.data, self.index, self.cfg.train.global_batch_size)
        start = time.perf_counter()
        self.trainer.train_step(batch)
        self.times.append(time.perf_counter() - start)
        self.learned.append(int((batch[:, LABELS] >= 0).sum()))
        self.index += 1

    def rate(self) -> tuple[float, float]:
        """(learned tokens per second, seconds per step): the mean learned tokens of a step over the fastest step
        (the machine is shared; the minimum is the least disturbed measurement), warm-up step excluded."""
        best = min(self.times[1:])
        return sum(self.learned[1:]) / len(self.learned[1:]) / best, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gpt3d-packing-"))
    tok, data = write_data(root, args.examples)
    base = ["preset=tiny-test", "model.vocab_size=512", "model.n_layers=4", "model.d_model=128", "model.n_heads=4",
            "model.seq_len=512", "train.global_batch_size=8", "train.micro_batch_size=8", "train.objective=sft",
            f"finetune.data={data}", f"data.tokenizer_dir={tok}", f"train.threads={args.threads}"]
    probe = load_config(None, base + ["finetune.sft.pack=false"])
    enc = Encoders(load_tokenizer(tok), probe.finetune.sft.template, probe.finetune.classify)
    # the baseline's sequence: the longest example, rounded up to 16
    longest = max(len(enc.sft(json.loads(line), "")) for line in Path(data).read_text().splitlines())
    unpacked_len = -(-longest // 16) * 16
    runs = {"unpacked": Run(base + ["finetune.sft.pack=false", f"train.seq_len={unpacked_len}"])}
    for seq in (unpacked_len, 2 * unpacked_len):
        runs[f"packed {seq}"] = Run(base + ["finetune.sft.pack=true", f"train.seq_len={seq}"])
    for _ in range(args.steps + 1):  # interleaved, so a burst of load from elsewhere hits every configuration
        for run in runs.values():
            run.step()
    base_rate, _ = runs["unpacked"].rate()
    for name, run in runs.items():
        rate, seconds = run.rate()
        per_row = sum(run.learned[1:]) / len(run.learned[1:]) / run.cfg.train.global_batch_size
        print(f"{name:12s} (seq {run.cfg.train.seq_len:4d}): {per_row:6.1f} learned tokens per row "
              f"({per_row / run.cfg.train.seq_len:4.0%} of its tokens), {rate:8.0f} learned tokens/s, "
              f"{seconds * 1e3:7.1f} ms/step, {rate / base_rate:.2f}x unpacked")

if __name__ == "__main__":
    main()
