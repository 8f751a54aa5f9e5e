"""`gpt3d align`: bad input gets one clear error before any rank starts (reward model without its head, vocabulary
or shape mismatches, malformed prompts, missing flags, invalid settings); the value head is saved and converted like
any tensor; an interrupted run resumed from its checkpoint continues exactly as an uninterrupted one. One process."""
from __future__ import annotations

import json

import pytest

from gpt3d.config import ConfigError, load_config

from tests.finetune.helpers import write_jsonl

from .tasks import MODEL, prepare

ROOT = prepare()


def run_cli(argv: list[str]) -> int:
    from gpt3d.cli import main
    return main(argv)


def common() -> list[str]:
    sets = MODEL + [f"data.tokenizer_dir={ROOT / 'tokenizer'}", "train.global_batch_size=4",
                    "train.micro_batch_size=2", "finetune.ppo.max_new_tokens=4", "finetune.ppo.epochs=2"]
    return ["tiny-test", *[a for kv in sets for a in ("--set", kv)]]


def align(out, *extra: str) -> int:
    return run_cli(["align", *common(), "--policy", str(ROOT / "policy"), "--reward", str(ROOT / "reward"),
                    "--prompts", str(ROOT / "prompts.jsonl"), "--out", str(out), *extra])


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resumed_run_continues_exactly_and_value_head_converts(tmp_path, capsys):
    from gpt3d.checkpoint.format import Checkpoint
    from gpt3d.checkpoint.store import resolve_checkpoint_path
    assert align(tmp_path / "whole", "--steps", "3") == 0
    assert "has no task_heads.value.weight, task_heads.value.bias: initialised fresh" in capsys.readouterr().out
    assert (tmp_path / "whole" / "reward_kl.png").read_bytes()[:4] == b"\x89PNG"
    assert align(tmp_path / "cut", "--steps", "2", "--save-interval", "1") == 0
    assert align(tmp_path / "cut", "--steps", "3") == 0  # auto-resume from step 2
    assert "resumed from" in capsys.readouterr().out
    whole, cut = metrics(tmp_path / "whole"), metrics(tmp_path / "cut")
    assert [r["step"] for r in cut] == [1, 2, 3]
    for a, b in zip(whole, cut):
        assert (a["loss"], a["reward"], a["kl"]) == (b["loss"], b["reward"], b["kl"])
    ckpt = Checkpoint(resolve_checkpoint_path(str(tmp_path / "whole")))
    value = ckpt.read("model/task_heads.value.weight")
    assert value.shape == (1, 32)
    assert run_cli(["convert", str(tmp_path / "whole"), str(tmp_path / "tp2"), "--tp", "2", "--pp", "2"]) == 0
    assert (Checkpoint(str(tmp_path / "tp2")).read("model/task_heads.value.weight") == value).all()
    # the aligned policy exports to Hugging Face as the language model (the value head only served training)
    from transformers import GPT2LMHeadModel
    assert run_cli(["convert", str(tmp_path / "whole"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert "task_heads.value (PPO's value head) is not part of the exported language model" in capsys.readouterr().out
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf"))
    wte = ckpt.read("model/embed.tok.weight")[:300]
    assert (hf.transformer.wte.weight.detach().numpy() == wte).all()


def test_bad_input_is_one_error_before_any_rank_starts(tmp_path, capsys):
    def refused(argv_out, *extra, cli=align) -> str:
        assert cli(argv_out, *extra) == 2
        assert not argv_out.exists()
        return capsys.readouterr().err

    bad = tmp_path / "bad"
    # a reward "model" without the reward head (the SFT policy)
    err = refused(bad, "--reward", str(ROOT / "policy"))
    assert "gpt3d align: error: --reward" in err and "not a reward model (its model.task_heads are none); train " \
                                                     "one with `gpt3d finetune --objective reward`" in err
    # the policy of another vocabulary than the run's model; a reference that is not the policy's model
    err = refused(bad, "--set", "model.vocab_size=310")
    assert "--policy" in err and "vocabulary: checkpoint vocab_size=300, run model.vocab_size=310" in err
    err = refused(bad, "--set", f"finetune.ppo.reference={ROOT / 'reward'}")
    assert "finetune.ppo.reference" in err and "does not fit the run's model" in err
    # a malformed prompts line, by number
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ab"}, "{oops", {"prompt": "cd"}])
    err = refused(bad, "--prompts", prompts)
    assert "p.jsonl:2: not valid JSON" in err
    # ptx without its data
    err = refused(bad, "--set", "finetune.ppo.ptx_coef=1")
    assert "finetune.ppo.ptx_data: ptx_coef=1.0 mixes in pretraining gradients: pass --ptx-data PREFIX" in err
    # a ptx batch that does not split into the data-parallel ranks' micro-batches
    err = refused(bad, "--ptx-data", str(ROOT / "ptx"), "--set", "finetune.ppo.ptx_coef=1", "--set",
                  "finetune.ppo.ptx_batch_size=2", "--dp", "2")
    assert "finetune.ppo.ptx_batch_size: 2 pretraining sequences do not split into micro-batches of 2 on 2 " \
           "data-parallel ranks; use a multiple of 4" in err
    # the same run as config keys through `gpt3d train` gets the reward model check too
    code = run_cli(["train", *common(), "--set", "train.objective=ppo", "--set", f"finetune.data={ROOT / 'prompts.jsonl'}",
                    "--set", f"finetune.init_from={ROOT / 'policy'}", "--set",
                    f"finetune.ppo.reward_model={ROOT / 'policy'}", "--out", str(bad)])
    assert code == 2 and "not a reward model" in capsys.readouterr().err and not bad.exists()


def test_config_validation():
    base = ["preset=tiny-test", "train.objective=ppo", "finetune.data=p.jsonl", "finetune.init_from=sft"]
    with pytest.raises(ConfigError, match="finetune.ppo.reward_model: train.objective=ppo scores rollouts with a "
                                          "reward model; pass --reward RM_CKPT"):
        load_config(None, base)
    base.append("finetune.ppo.reward_model=rm")
    cfg = load_config(None, base)
    assert cfg.model.task_heads == {"value": 1}
    for override, message in (("finetune.ppo.gamma=1.5", "finetune.ppo.gamma: must be in [0, 1], got 1.5"),
                              ("finetune.ppo.temperature=0", "finetune.ppo.temperature: must be > 0"),
                              ("model.hidden_dropout=0.1", "model.hidden_dropout: PPO's probability ratio"),
                              ("parallel.pp=2 parallel.vp=2", "parallel.vp: rollouts run in the pipeline layout"),
                              ("finetune.ppo.ptx_data=x", "finetune.ppo.ptx_coef: --ptx-data is given but ptx_coef "
                                                          "is 0"),
                              ("finetune.ppo.ptx_batch_size=3 train.micro_batch_size=2",
                               "finetune.ppo.ptx_batch_size: 3 pretraining sequences do not split"),
                              ("finetune.ppo.max_new_tokens=64", "finetune.ppo.max_new_tokens: 64 new tokens leave no "
                                                                 "room for a prompt in train.seq_len=64")):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_config(None, base + override.split())


def test_long_prompts_are_cut_from_the_left_with_a_count_or_refused(tmp_path):
    from gpt3d.align.data import build_prompts, prompt_of
    from gpt3d.config.finetune import ChatTemplate, ClassifyConfig
    from gpt3d.data.tokenizer import load_tokenizer
    from gpt3d.finetune.examples import Encoders
    long = {"prompt": "abcdef " * 30}
    data = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "ab"}, long])
    base = ["preset=tiny-test", *MODEL, f"data.tokenizer_dir={ROOT / 'tokenizer'}", "train.objective=ppo",
            f"finetune.data={data}", "finetune.init_from=sft", "finetune.ppo.reward_model=rm",
            "finetune.ppo.max_new_tokens=8"]
    built = build_prompts(load_config(None, base))["train"]
    assert (built.examples, built.truncated) == (2, 1)
    full = Encoders(load_tokenizer(str(ROOT / "tokenizer")), ChatTemplate(), ClassifyConfig()).prompt_ids(long, "")
    assert prompt_of(built.rows[1]) == full[-56:]  # its end (up to the assistant prefix) kept: 64 - 8 tokens
    with pytest.raises(ValueError, match=r"long\.jsonl:2: prompt of \d+ tokens \+ finetune.ppo.max_new_tokens=8 "
                                         r"exceeds train.seq_len=64; shorten it, raise train.seq_len, or set "
                                         r"finetune.overlong=truncate"):
        build_prompts(load_config(None, base + ["finetune.overlong=refuse"]))
