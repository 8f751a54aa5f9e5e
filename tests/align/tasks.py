"""Files the PPO tests share, written once to a fixed temporary directory (spawned ranks read the same files): a
tiny tokenizer, a policy and a reward model checkpoint (one step of `gpt3d finetune` each; the reward model is wider
than the policy), prompts, and a pretraining dataset for the ptx term."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tests.finetune.helpers import make_tokenizer, words, write_jsonl
from tests.finetune.tasks import ranking_rows, sft_rows

ROOT = Path(tempfile.gettempdir()) / "gpt3d-align-tests"
MODEL = ["model.vocab_size=300", "model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.seq_len=64",
         "train.threads=1"]
REWARD_MODEL = ["model.vocab_size=300", "model.n_layers=2", "model.d_model=48", "model.n_heads=2",
                "model.seq_len=64", "train.threads=1"]


def _build(staging: Path) -> None:
    from gpt3d.cli import main
    from gpt3d.data.indexed_dataset import write_indexed_dataset
    from gpt3d.data.tokenizer import load_tokenizer
    tok = make_tokenizer(staging / "tokenizer")
    for name, objective, rows, model in (("policy", "sft", sft_rows(8, 21), MODEL),
                                         ("reward", "reward", ranking_rows(8, 22), REWARD_MODEL)):
        sets = [a for kv in model + [f"data.tokenizer_dir={tok}", "train.global_batch_size=2",
                                     "train.micro_batch_size=2"] for a in ("--set", kv)]
        data = write_jsonl(staging / f"{name}.jsonl", rows)
        assert main(["finetune", "tiny-test", *sets, "--data", data, "--objective", objective, "--steps", "1",
                     "--out", str(staging / name)]) == 0
    write_jsonl(staging / "prompts.jsonl", [{"prompt": w} for w in words(16, 23, 1, 6)])
    tokenizer = load_tokenizer(tok)
    text = " ".join(words(400, 24))
    write_indexed_dataset(staging / "ptx", [tokenizer.encode(text[i:i + 200]) for i in range(0, len(text), 200)],
                          300)


def prepare() -> Path:
    """The directory of the shared files (built once, atomically)."""
    if not (ROOT / "ptx.idx").exists():
        staging = ROOT.with_name(f".{ROOT.name}.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        _build(staging)
        try:
            os.rename(staging, ROOT)
        except OSError:  # another process won the race
            shutil.rmtree(staging)
    return ROOT


def ppo_overrides(root: Path) -> list[str]:
    """A PPO-ptx run on the shared files (config keys, as `gpt3d align` sets them)."""
    return [f"data.tokenizer_dir={root / 'tokenizer'}", "train.objective=ppo", f"finetune.data={root / 'prompts.jsonl'}",
            f"finetune.init_from={root / 'policy'}", f"finetune.ppo.reward_model={root / 'reward'}",
            f"finetune.ppo.ptx_data={root / 'ptx'}", "finetune.ppo.ptx_coef=0.5"]
