"""PPO's losses equal trl's (trl 1.12, the last release with trl/experimental/ppo/ppo_trainer.py) on identical tiny
batches (<= 1e-5). trl computes PPO inline in PPOTrainer.train(); the test runs its steps line by line (line numbers of
trl 1.12.0's ppo_trainer.py), with trl's own functions where it has them (forward, get_reward, first_true_indices,
selective_log_softmax, masked_mean, masked_whiten, PolicyAndValueWrapper) and its config (PPOConfig), on Hugging
Face GPT-2 models holding the weights of gpt3d's policy, reference, value head and reward model. gpt3d computes the same
from its packed rollout rows through the model's objective, as its trainer does (gpt3d/align/rollouts.py).

trl's completions here run to max_new_tokens (no stop token): trl adds the score one position after a completion that
stopped early (its padding_mask_p1) where gpt3d adds it on the completion's last token, so early stops are checked
on the pieces whose masks agree (second test)."""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from trl.experimental.ppo import PPOConfig as TrlPPOConfig
from trl.experimental.ppo.ppo_trainer import (INVALID_LOGPROB, PolicyAndValueWrapper, forward, masked_mean,
                                              masked_whiten)
from trl.experimental.utils import first_true_indices, get_reward
from trl.trainer.utils import selective_log_softmax

from gpt3d.align import losses
from gpt3d.config.align import PPOConfig
from tests.finetune.helpers import finetune_config, make_tokenizer, words, write_jsonl
from tests.finetune.test_trl_parity import encoders, hf_lm

TOL = 1e-5
R = 6  # completion tokens


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def trl_config(tmp_path) -> TrlPPOConfig:
    return TrlPPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, kl_coef=0.1, gamma=0.99,
                        lam=0.9, cliprange=0.1, cliprange_value=0.05, vf_coef=0.3, temperature=0.7)


def gpt3d_config(args: TrlPPOConfig) -> PPOConfig:
    return PPOConfig(reward_model="rm", max_new_tokens=R, temperature=args.temperature, kl_coef=args.kl_coef,
                     gamma=args.gamma, lam=args.lam, cliprange=args.cliprange, cliprange_value=args.cliprange_value,
                     vf_coef=args.vf_coef)


class Scored(nn.Module):
    """A GPT-2 backbone with a scalar head, the shape trl's get_reward and PolicyAndValueWrapper read
    (`base_model_prefix`, `score`)."""
    base_model_prefix = "transformer"

    def __init__(self, transformer: nn.Module, score: nn.Linear):
        super().__init__()
        self.transformer, self.score = transformer, score


def hf_backbone(model, cfg):
    from transformers import GPT2Model

    from gpt3d.interop.hf import hf_config_from_model_config, state_dict_to_hf
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("task_heads.")}
    backbone = GPT2Model(hf_config_from_model_config(cfg.model))
    weights = {k.removeprefix("transformer."): v for k, v in state_dict_to_hf(sd, cfg.model).items()
               if k.startswith("transformer.")}
    backbone.load_state_dict(weights, strict=False)
    return backbone.eval()


def test_ppo_losses_with_kl_rewards_and_gae_match_trl(tmp_path, tokenizer_dir):
    from gpt3d.align.data import rollout_rows
    from gpt3d.align.objective import make_ppo_loss, make_reference_logps, make_rollout_stats
    from gpt3d.align.rollouts import attach_rollouts, completion_span
    from gpt3d.finetune.objectives import PackedBatch, reward_scores
    from gpt3d.model.gpt import build_gpt
    args = trl_config(tmp_path)
    ppo = gpt3d_config(args)
    prompts_file = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": w} for w in words(4, 9, 1, 6)])
    cfg = finetune_config("ppo", prompts_file, tokenizer_dir, ["finetune.init_from=unused",
                                                               "finetune.ppo.reward_model=unused"])
    rm_cfg = finetune_config("reward", prompts_file, tokenizer_dir, ["model.d_model=48"])  # another width
    enc = encoders(cfg)
    prompts = [enc.prompt_ids({"prompt": w}, "") for w in words(4, 9, 1, 6)]
    assert len({len(p) for p in prompts}) > 1, "prompts of several lengths (trl left-pads them)"
    rng = random.Random(0)
    used = {t for p in prompts for t in p}
    pad = next(t for t in range(cfg.model.vocab_size) if t not in used)  # trl finds padding by token id
    completions = [[rng.choice([t for t in range(3, 250) if t != pad]) for _ in range(R)] for _ in prompts]

    policy, reference = build_gpt(cfg.model, 1), build_gpt(cfg.model, 2)
    rm = build_gpt(rm_cfg.model, 3)
    with torch.no_grad():
        policy.task_heads["value"].weight.normal_(0, 1.0)  # values and scores of a few units, as after training
        rm.task_heads["reward"].weight.normal_(0, 1.0)

    # gpt3d: packed rows, the three frozen passes, rewards/GAE/whitening, then the loss of a changed policy
    batch = PackedBatch.from_rows(rollout_rows(prompts, completions, cfg.train.seq_len, enc.tok.eod_id), "cpu")
    run = lambda model, objective: (setattr(model, "objective", objective),  # noqa: E731
                                    model(batch.tokens, batch, layout=batch.layout))[1]
    with torch.no_grad():
        stats = run(policy, make_rollout_stats(ppo.temperature))
        ref = run(reference, make_reference_logps(ppo.temperature))
        scores = run(rm, reward_scores)
    attach_rollouts([batch], [stats], [ref], [scores], 1.0, ppo, None)
    old = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    with torch.no_grad():
        torch.manual_seed(5)
        for p in policy.parameters():  # one optimizer step's worth of change: ratios away from 1, some clipped
            p.add_(torch.randn_like(p) * 0.03)
    ours = run(policy, make_ppo_loss(ppo))
    index, valid = completion_span(batch.labels >= 0, R)
    assert valid.all()

    # trl: the same weights in Hugging Face GPT-2 models
    policy_after = {k: v.clone() for k, v in policy.state_dict().items()}
    policy.load_state_dict(old)
    hf_policy, hf_reference = hf_lm(policy, cfg), hf_lm(reference, cfg)
    value_model = Scored(hf_backbone(policy, cfg), policy.task_heads["value"])
    reward_model = Scored(hf_backbone(rm, rm_cfg), rm.task_heads["reward"])
    width = max(len(p) for p in prompts)
    queries = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left-padded, as trl's collator
    responses = torch.tensor(completions)
    context_length = queries.shape[1]
    query_responses = torch.cat([queries, responses], 1)
    with torch.no_grad():
        # 699-701: trl takes the generation's logits; the same positions of a forward pass
        logits = forward(hf_policy, query_responses, pad).logits[:, context_length - 1:-1]
        logits /= args.temperature + 1e-7
        logprobs = selective_log_softmax(logits, responses)  # 701
        prob_dist = torch.nn.functional.softmax(logits, dim=-1)  # 855-856: trl's entropy, of the rollout's logits
        entropy = torch.logsumexp(logits, dim=-1) - torch.sum(prob_dist * logits, dim=-1)
        ref_logits = forward(hf_reference, query_responses, pad).logits[:, context_length - 1:-1]  # 710-711
        ref_logits /= args.temperature + 1e-7  # 712
        ref_logprobs = selective_log_softmax(ref_logits, responses)  # 713
        postprocessed_response = responses  # 717-721: no stop token in these completions
        postprocessed_query_response = torch.cat((query_responses[:, :context_length], postprocessed_response), 1)
        sequence_lengths = first_true_indices(postprocessed_response == pad) - 1  # 727
        full_value, _, _ = get_reward(value_model, query_responses, pad, context_length)  # 729-731
        values = full_value[:, context_length - 1:-1].squeeze(-1)  # 732
        _, score, _ = get_reward(reward_model, postprocessed_query_response, pad, context_length)  # 733-735
        # 763-798
        response_idxs = torch.arange(responses.shape[1]).repeat(responses.shape[0], 1)
        padding_mask = response_idxs > sequence_lengths.unsqueeze(1)
        logprobs = torch.masked_fill(logprobs, padding_mask, INVALID_LOGPROB)
        ref_logprobs = torch.masked_fill(ref_logprobs, padding_mask, INVALID_LOGPROB)
        sequence_lengths_p1 = sequence_lengths + 1
        padding_mask_p1 = response_idxs > (sequence_lengths_p1.unsqueeze(1))
        values = torch.masked_fill(values, padding_mask_p1, 0)
        logr = ref_logprobs - logprobs
        kl = -logr  # k1
        non_score_reward = -args.kl_coef * kl
        rewards = non_score_reward.clone()
        actual_start = torch.arange(rewards.size(0))
        actual_end = torch.where(sequence_lengths_p1 < rewards.size(1), sequence_lengths_p1, sequence_lengths)
        rewards[actual_start, actual_end] += score
        lastgaelam = 0
        advantages_reversed = []
        gen_length = responses.shape[1]
        for t in reversed(range(gen_length)):
            nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
            delta = rewards[:, t] + args.gamma * nextvalues - values[:, t]
            lastgaelam = delta + args.gamma * args.lam * lastgaelam
            advantages_reversed.append(lastgaelam)
        advantages = torch.stack(advantages_reversed[::-1], axis=1)
        returns = advantages + values
        advantages = masked_whiten(advantages, ~padding_mask)
        advantages = torch.masked_fill(advantages, padding_mask, 0)
    policy.load_state_dict(policy_after)  # the changed policy, as after an optimizer step
    model = PolicyAndValueWrapper(hf_lm(policy, cfg), Scored(hf_backbone(policy, cfg), policy.task_heads["value"]))
    with torch.no_grad():  # 820-847
        output, vpred_temp = forward(model, query_responses, pad)
        logits = output.logits[:, context_length - 1:-1]
        logits /= args.temperature + 1e-7
        new_logprobs = selective_log_softmax(logits, responses)
        new_logprobs = torch.masked_fill(new_logprobs, padding_mask, INVALID_LOGPROB)
        vpred = vpred_temp[:, context_length - 1:-1].squeeze(-1)
        vpred = torch.masked_fill(vpred, padding_mask_p1, 0)
        vpredclipped = torch.clamp(vpred, values - args.cliprange_value, values + args.cliprange_value)
        vf_losses1 = torch.square(vpred - returns)
        vf_losses2 = torch.square(vpredclipped - returns)
        vf_loss_max = torch.max(vf_losses1, vf_losses2)
        vf_loss = 0.5 * masked_mean(vf_loss_max, ~padding_mask_p1)
        vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).float(), ~padding_mask_p1)  # 838-840
        logprobs_diff = new_logprobs - logprobs
        ratio = torch.exp(logprobs_diff)
        pg_losses = -advantages * ratio
        pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - args.cliprange, 1.0 + args.cliprange)
        pg_loss_max = torch.max(pg_losses, pg_losses2)
        pg_loss = masked_mean(pg_loss_max, ~padding_mask)
        loss = pg_loss + args.vf_coef * vf_loss
        pg_clipfrac = masked_mean((pg_losses2 > pg_losses).float(), ~padding_mask)  # 852-854

    rollout = batch.align
    pick = lambda x: x.gather(1, index)  # noqa: E731 - gpt3d's [rows, seq_len] at the completion tokens
    torch.testing.assert_close(scores, score, atol=TOL, rtol=0)
    torch.testing.assert_close(pick(rollout.old_logps), logprobs, atol=TOL, rtol=0)
    torch.testing.assert_close(pick(rollout.old_values), values, atol=TOL, rtol=0)
    torch.testing.assert_close(pick(rollout.advantages), advantages, atol=TOL, rtol=0)
    torch.testing.assert_close(pick(rollout.returns), returns, atol=TOL, rtol=0)
    assert batch.metrics["kl"].item() == pytest.approx(kl.sum(1).mean().item(), abs=TOL)  # trl's objective/kl
    assert batch.metrics["entropy"].item() == pytest.approx(entropy.mean().item(), abs=TOL)
    assert batch.metrics["policy_loss"].item() == pytest.approx(pg_loss.item(), abs=TOL)
    assert batch.metrics["value_loss"].item() == pytest.approx(vf_loss.item(), abs=TOL)
    assert batch.metrics["clip_fraction"].item() == pytest.approx(pg_clipfrac.item(), abs=TOL)
    assert batch.metrics["value_clip_fraction"].item() == pytest.approx(vf_clipfrac.item(), abs=TOL)
    assert ours.item() == pytest.approx(loss.item(), abs=TOL)
    # a real test: KL, clipping and both losses are away from their trivial values
    assert kl.abs().sum() > 0.1 and 0 < pg_clipfrac < 1 and 0 < vf_clipfrac < 1 and abs(pg_loss) > 1e-3


def test_whitening_and_clipped_surrogate_match_trl_when_completions_stop_early(tmp_path):
    """Completions of different lengths (early stops): trl's masked_whiten and clipped surrogate (lines 797-798,
    841-846, 852-854) over its padding_mask equal gpt3d's over the completion mask; the whitening statistics of two
    halves of the batch reduced over a 2-rank data-parallel group equal those of the whole batch."""
    args = trl_config(tmp_path)
    g = torch.Generator().manual_seed(0)
    sequence_lengths = torch.tensor([5, 2, 0, 3])  # index of each completion's last token
    response_idxs = torch.arange(R).repeat(4, 1)
    padding_mask = response_idxs > sequence_lengths.unsqueeze(1)
    raw = torch.randn(4, R, generator=g) * 2 + 1
    logprobs, new_logprobs = -torch.rand(4, R, generator=g) * 3, -torch.rand(4, R, generator=g) * 3
    advantages = torch.masked_fill(masked_whiten(raw, ~padding_mask), padding_mask, 0)
    ratio = torch.exp(new_logprobs - logprobs)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - args.cliprange, 1.0 + args.cliprange)
    pg_loss = masked_mean(torch.max(pg_losses, pg_losses2), ~padding_mask)
    pg_clipfrac = masked_mean((pg_losses2 > pg_losses).float(), ~padding_mask)

    mask = (~padding_mask).float()
    ours = losses.masked_whiten(raw, mask)
    torch.testing.assert_close(ours, advantages, atol=TOL, rtol=0)
    loss, clipfrac = losses.policy_loss(new_logprobs, logprobs, ours, mask, args.cliprange)
    assert loss.item() == pytest.approx(pg_loss.item(), abs=TOL)
    assert clipfrac.item() == pytest.approx(pg_clipfrac.item(), abs=TOL)
    assert 0 < pg_clipfrac < 1
