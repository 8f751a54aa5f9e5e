"""Each fine-tuning loss equals trl's on identical tiny batches (<= 1e-5): trl's own trainers (SFTTrainer,
RewardTrainer, DPOTrainer) compute the loss of a Hugging Face GPT-2 holding the same weights, on the examples one per
sequence; gpt3d computes it from its packed rows (several examples per row, a prompt shared by its completions), so
the packing, position resets and attention masks are checked too."""
from __future__ import annotations

import copy

import pytest
import torch

from .helpers import finetune_config, gpt3d_model, make_tokenizer, packed_batch, words, write_jsonl

trl = pytest.importorskip("trl", reason="pip install trl (launchers/setup_env.sh --test)")

TOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def hf_tokenizer(tokenizer_dir: str):
    from transformers import GPT2TokenizerFast
    tok = GPT2TokenizerFast.from_pretrained(tokenizer_dir)
    tok.pad_token = tok.eos_token = "<|endoftext|>"
    return tok


def hf_weights(model, cfg) -> dict:
    from gpt3d.interop.hf import state_dict_to_hf
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("task_heads.")}
    return state_dict_to_hf(sd, cfg.model)


def hf_lm(model, cfg):
    from transformers import GPT2LMHeadModel

    from gpt3d.interop.hf import hf_config_from_model_config
    hf = GPT2LMHeadModel(hf_config_from_model_config(cfg.model))
    hf.load_state_dict(hf_weights(model, cfg), strict=False)  # lm_head is tied to wte
    return hf.eval()


def right_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad] * (n - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in seqs])
    return ids, mask


def encoders(cfg):
    from gpt3d.data.tokenizer import load_tokenizer
    from gpt3d.finetune.examples import Encoders
    return Encoders(load_tokenizer(cfg.data.tokenizer_dir), cfg.finetune.sft.template, cfg.finetune.classify)


def trl_args(cls, tmp_path, **kw):
    return cls(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, **kw)  # fp32 parity


def test_sft_masked_loss_matches_trl(tmp_path, tokenizer_dir):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    rows = [{"prompt": f"reverse {w}", "completion": w[::-1]} for w in words(6, 1)]
    rows += [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "good"},
                           {"role": "assistant", "content": "yes"}, {"role": "user", "content": "bad"},
                           {"role": "assistant", "content": "no"}]}]
    cfg = finetune_config("sft", write_jsonl(tmp_path / "sft.jsonl", rows), tokenizer_dir)
    batch = packed_batch(cfg)
    assert (batch.examples.max(dim=1).values > 1).any(), "the test must pack several examples in a row"
    model = gpt3d_model(cfg, seed=3)
    ours = model(batch.tokens, batch, layout=batch.layout)

    enc = encoders(cfg)
    seqs, labels = [], []
    for i, row in enumerate(rows):
        pieces = enc.chat_pieces(row, f"row {i}")
        ids = [t for part, _ in pieces for t in part]
        seqs.append(ids)
        labels.append([t if learned else -100 for part, learned in pieces for t in part])
    ids, mask = right_pad(seqs, 0)
    lab, _ = right_pad(labels, -100)
    lm = hf_lm(model, cfg)
    trainer = SFTTrainer(model=lm, args=trl_args(SFTConfig, tmp_path, completion_only_loss=True),
                         train_dataset=Dataset.from_list([{"prompt": "a", "completion": "b"}]),
                         processing_class=hf_tokenizer(tokenizer_dir))
    theirs = trainer.compute_loss(trainer.model, {"input_ids": ids, "attention_mask": mask, "labels": lab})
    assert ours.item() == pytest.approx(theirs.item(), abs=TOL)
    assert ours.item() > 1.0  # a real loss, not a degenerate zero


def test_reward_pairwise_loss_matches_trl(tmp_path, tokenizer_dir):
    """K = 3 rankings: gpt3d encodes each prompt once with its three completions as branches and expands the C(3,2)
    pairs; trl gets the six (chosen, rejected) pairs as separate sequences."""
    from datasets import Dataset
    from transformers import GPT2ForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from gpt3d.config.finetune import REWARD_HEAD
    from gpt3d.interop.hf import hf_config_from_model_config
    prompts, comps = words(2, 5), words(6, 6)
    rows = [{"prompt": p, "completions": comps[3 * i:3 * i + 3]} for i, p in enumerate(prompts)]
    cfg = finetune_config("reward", write_jsonl(tmp_path / "rm.jsonl", rows), tokenizer_dir)
    batch = packed_batch(cfg)
    model = gpt3d_model(cfg, seed=4)
    with torch.no_grad():
        model.task_heads[REWARD_HEAD].weight.normal_(0, 1.0)  # spread the rewards so the pairs differ
    ours = model(batch.tokens, batch, layout=batch.layout)

    enc = encoders(cfg)
    chosen, rejected = [], []
    for i, row in enumerate(rows):
        prompt, ranked = enc.ranked(row, f"row {i}")
        for a in range(3):
            for b in range(a + 1, 3):
                chosen.append(prompt + ranked[a])
                rejected.append(prompt + ranked[b])
    used = {t for s in chosen + rejected for t in s}
    pad = next(t for t in range(cfg.model.vocab_size) if t not in used)
    ids, mask = right_pad(chosen + rejected, pad)
    hf_cfg = hf_config_from_model_config(cfg.model)
    hf_cfg.num_labels, hf_cfg.pad_token_id = 1, pad
    rm = GPT2ForSequenceClassification(hf_cfg)
    rm.load_state_dict({**hf_weights(model, cfg), "score.weight": model.task_heads[REWARD_HEAD].weight.detach()},
                       strict=False)
    tok = hf_tokenizer(tokenizer_dir)
    tok.pad_token = tok.convert_ids_to_tokens(pad)  # trl sets the model's pad id from the tokenizer's
    trainer = RewardTrainer(model=rm.eval(), args=trl_args(RewardConfig, tmp_path),
                            train_dataset=Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}]),
                            processing_class=tok)
    theirs = trainer.compute_loss(trainer.model, {"input_ids": ids, "attention_mask": mask})
    assert ours.item() == pytest.approx(theirs.item(), abs=TOL)
    assert abs(ours.item() - 0.6931) > 0.05  # rewards really differ


def test_dpo_loss_matches_trl(tmp_path, tokenizer_dir):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from gpt3d.finetune.objectives import reference_logps
    prompts, comps = words(3, 7), words(6, 8)
    rows = [{"prompt": p, "chosen": comps[2 * i], "rejected": comps[2 * i + 1]} for i, p in enumerate(prompts)]
    cfg = finetune_config("dpo", write_jsonl(tmp_path / "dpo.jsonl", rows), tokenizer_dir,
                          ["finetune.dpo.beta=0.5"])
    batch = packed_batch(cfg)
    policy, reference = gpt3d_model(cfg, seed=5), gpt3d_model(cfg, seed=6)
    reference.objective = reference_logps
    batch.reference = reference(batch.tokens, batch, layout=batch.layout)
    ours = policy(batch.tokens, batch, layout=batch.layout)

    enc = encoders(cfg)
    seqs, masks = {"chosen": [], "rejected": []}, {"chosen": [], "rejected": []}
    for i, row in enumerate(rows):
        prompt, (c, r) = enc.ranked(row, f"row {i}")
        for key, comp in (("chosen", c), ("rejected", r)):
            seqs[key].append(prompt + comp)
            masks[key].append([0] * len(prompt) + [1] * len(comp))
    ids, attention = right_pad(seqs["chosen"] + seqs["rejected"], 0)
    completion, _ = right_pad(masks["chosen"] + masks["rejected"], 0)
    args = trl_args(DPOConfig, tmp_path, beta=0.5)
    trainer = DPOTrainer(model=hf_lm(policy, cfg), ref_model=hf_lm(reference, cfg), args=args,
                         train_dataset=Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}]),
                         processing_class=hf_tokenizer(tokenizer_dir))
    theirs = trainer._compute_loss(trainer.model, {"input_ids": ids, "attention_mask": attention,
                                                   "completion_mask": completion}, False)
    assert ours.item() == pytest.approx(theirs.item(), abs=TOL)
    assert abs(ours.item() - 0.6931) > 1e-3  # policy and reference differ
