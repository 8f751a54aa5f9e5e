"""Fine-tuning data and command checks: packing, bad input (line numbers, over-long examples, checkpoints), heads in
checkpoints and `gpt3d convert`, config validation. One process, no spawned ranks."""
from __future__ import annotations

import pytest
import torch

from gpt3d.config import ConfigError
from gpt3d.finetune.data import build_finetune_data

from .helpers import finetune_config, gpt3d_model, make_tokenizer, packed_batch, write_jsonl
from .tasks import sft_rows


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_packed_loss_equals_unpacked_per_example_loss(tmp_path, tok):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8, 11))
    packed_cfg = finetune_config("sft", data, tok, ["model.seq_len=128"])
    single_cfg = finetune_config("sft", data, tok, ["model.seq_len=128", "finetune.sft.pack=false"])
    packed, single = packed_batch(packed_cfg), packed_batch(single_cfg)
    assert packed.tokens.shape[0] < single.tokens.shape[0] == 8  # really packed: fewer rows than examples
    assert int(packed.examples.max()) >= 3
    model = gpt3d_model(packed_cfg, seed=2)
    got = model(packed.tokens, packed, layout=packed.layout)
    want = model(single.tokens, single, layout=single.layout)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    # and each unpacked row is the plain causal model on that example alone (positions 0.., no mask)
    row = single.tokens[:1]
    n = int((single.examples[0] > 0).sum())
    plain = model(row[:, :n])  # logits with the default causal attention
    masked = model.head.logits(model.final_ln(model.run_blocks(model.embed(row, single.layout.positions[:1]),
                                                               single.layout.attention_mask()[:1])),
                               model.head_weight())[:, :n]
    torch.testing.assert_close(masked, plain, atol=1e-5, rtol=1e-5)


def test_malformed_lines_are_refused_with_their_number(tmp_path, tok):
    rows = [sft_rows(1, 1)[0], "{not json", sft_rows(1, 2)[0]]
    cfg = finetune_config("sft", write_jsonl(tmp_path / "bad.jsonl", rows), tok)
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        build_finetune_data(cfg)
    cfg = finetune_config("sft", write_jsonl(tmp_path / "keys.jsonl", [{"prompt": "a", "answer": "b"}]), tok)
    with pytest.raises(ValueError, match=r"keys\.jsonl:1: field 'completion' must be a string, got None"):
        build_finetune_data(cfg)
    cfg = finetune_config("reward", write_jsonl(tmp_path / "rank.jsonl", [{"prompt": "a", "completions": ["b"]}]),
                          tok)
    with pytest.raises(ValueError, match=r"rank\.jsonl:1: 'completions' must list >= 2 strings, best first"):
        build_finetune_data(cfg)
    cfg = finetune_config("classify", write_jsonl(tmp_path / "cls.jsonl", [{"text": "ab", "label": 5}]), tok)
    with pytest.raises(ValueError, match=r"cls\.jsonl:1: 'label' must be an integer in \[0, 2\), got 5"):
        build_finetune_data(cfg)


def test_overlong_examples_truncated_with_a_count_or_refused(tmp_path, tok):
    long = {"prompt": "reverse " + "abcdef" * 3, "completion": "fedcba" * 20}
    data = write_jsonl(tmp_path / "long.jsonl", sft_rows(3, 1) + [long])
    cfg = finetune_config("sft", data, tok)
    built = build_finetune_data(cfg)["train"]
    assert (built.examples, built.truncated) == (4, 1)
    assert built.rows.shape[-1] == 64
    cfg = finetune_config("sft", data, tok, ["finetune.overlong=refuse"])
    with pytest.raises(ValueError, match=r"long\.jsonl:4: \d+ tokens, more than train.seq_len=64; shorten the "
                                         r"example, raise train.seq_len, or set finetune.overlong=truncate"):
        build_finetune_data(cfg)
    # a ranking keeps its prompt and shortens its longest completion
    data = write_jsonl(tmp_path / "rlong.jsonl", [{"prompt": "ab", "completions": ["cd" * 40, "ef"]}])
    built = build_finetune_data(finetune_config("reward", data, tok))["train"]
    assert built.truncated == 1 and sorted(built.rows[0, 5][built.rows[0, 5] > 0].tolist()) == [1, 2]


def test_config_needs_data_and_dense_attention():
    from gpt3d.config import load_config
    with pytest.raises(ConfigError, match="finetune.data: train.objective=sft reads a JSONL file of examples; pass "
                                          "--data FILE.jsonl"):
        load_config(None, ["preset=tiny-test", "train.objective=sft"])
    with pytest.raises(ConfigError, match="model.attention_pattern: train.objective=dpo packs examples"):
        load_config(None, ["preset=tiny-test", "train.objective=dpo", "finetune.data=x.jsonl",
                           "model.attention_pattern=alternating", "model.sparse.block=16"])
    cfg = load_config(None, ["preset=tiny-test", "train.objective=classify", "finetune.data=x.jsonl",
                             "finetune.classify.num_classes=3"])
    assert cfg.model.task_heads == {"classify": 3}


def run_cli(argv: list[str]) -> int:
    from gpt3d.cli import main
    return main(argv)


def test_finetune_command_heads_in_checkpoints_convert_and_errors(tmp_path, tok, capsys):
    from gpt3d.checkpoint.format import Checkpoint
    from gpt3d.checkpoint.store import resolve_checkpoint_path
    common = ["tiny-test", "--set", "model.vocab_size=300", "--set", f"data.tokenizer_dir={tok}", "--set",
              "train.threads=1", "--set", "model.n_layers=2", "--set", "model.d_model=32", "--set", "model.n_heads=2"]
    sft = write_jsonl(tmp_path / "sft.jsonl", sft_rows(16, 3))
    assert run_cli(["finetune", *common, "--data", sft, "--objective", "sft", "--steps", "2",
                    "--out", str(tmp_path / "sft")]) == 0
    pairs = write_jsonl(tmp_path / "rm.jsonl", [{"prompt": "ab", "chosen": "aa", "rejected": "bb"}] * 8)
    # A pretrain/SFT checkpoint has no reward head: it starts fresh (and is said so), then is saved like any tensor.
    assert run_cli(["finetune", *common, "--from", str(tmp_path / "sft"), "--data", pairs, "--objective", "reward",
                    "--steps", "1", "--out", str(tmp_path / "rm")]) == 0
    out = capsys.readouterr().out
    assert "has no task_heads.reward.weight, task_heads.reward.bias: initialised fresh" in out
    rm = Checkpoint(resolve_checkpoint_path(str(tmp_path / "rm")))
    head = rm.read("model/task_heads.reward.weight")
    assert head.shape == (1, 32)
    assert run_cli(["convert", str(tmp_path / "rm"), str(tmp_path / "rm-tp2"), "--tp", "2", "--pp", "2"]) == 0
    converted = Checkpoint(str(tmp_path / "rm-tp2"))
    assert converted.layout["tp"] == 2 and (converted.read("model/task_heads.reward.weight") == head).all()
    # Scoring with a checkpoint that has no reward head: one clear error.
    from gpt3d.checkpoint.errors import CheckpointError
    from gpt3d.finetune.scoring import RewardModel
    with pytest.raises(CheckpointError, match=r"not a reward model \(its model.task_heads are none\); train one "
                                              r"with `gpt3d finetune --objective reward`"):
        RewardModel(str(resolve_checkpoint_path(str(tmp_path / "sft"))))
    assert RewardModel(str(resolve_checkpoint_path(str(tmp_path / "rm")))).score([1, 2, 3], [[4, 5], [6]])[0] != 0
    # A checkpoint of another vocabulary: one clear error before any rank starts.
    code = run_cli(["finetune", *common, "--set", "model.vocab_size=310", "--from", str(tmp_path / "sft"),
                    "--data", pairs, "--objective", "reward", "--steps", "1", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2
    assert "gpt3d finetune: error: --from" in err and "vocabulary: checkpoint vocab_size=300, run " \
                                                        "model.vocab_size=310" in err
    assert not (tmp_path / "bad").exists()
    # The same run as config keys through `gpt3d train` (YAML, SLURM) gets the same check.
    code = run_cli(["train", *common, "--set", "model.vocab_size=310", "--set", "train.objective=reward", "--set",
                    f"finetune.data={pairs}", "--set", f"finetune.init_from={tmp_path / 'sft'}", "--steps", "1",
                    "--out", str(tmp_path / "bad")])
    assert code == 2 and "vocabulary: checkpoint vocab_size=300" in capsys.readouterr().err
