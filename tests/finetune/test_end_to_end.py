"""End to end on the CPU with `gpt3d finetune` (one process, tiny models):
- SFT learns a synthetic instruction (answer "yes" when the word starts with a, b or c, else "no"): held-out greedy
  answers from gpt3d's inference engine are right >= 90% of the time;
- a reward model learns a preference (more letters 'a' is better): held-out pairwise accuracy >= 90%;
- DPO on preference pairs raises that reward model's mean score of the policy's sampled completions on held-out prompts
  by >= MARGIN within DPO_STEPS steps, while the sampled KL to the reference (the SFT model) stays below KL_BOUND;
  reward and KL against step are plotted;
- PPO-ptx (`gpt3d align`) from the same SFT policy against the same reward model raises it by >= PPO_MARGIN within
  PPO_STEPS steps with the KL below KL_BOUND, and the run writes its reward/KL plot."""
from __future__ import annotations

import json
import random

import pytest

from .helpers import LETTERS, make_tokenizer, write_jsonl

DPO_STEPS, EVERY = 40, 20
PPO_STEPS, PPO_EVERY = 20, 10
PPO_MARGIN = 2.0  # measured: about +4 by step 20 (from about -1.2), KL about 2.5 nats
MARGIN = 0.5  # in units of the reward model's score (its scores of 0- vs 3-'a' completions differ by several units)
KL_BOUND = 5.0  # nats per completion


def word(rng: random.Random, n: int = 3) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(n))


def completion(rng: random.Random, a_count: int, n: int = 5) -> str:
    letters = ["a"] * a_count + [rng.choice(LETTERS[1:]) for _ in range(n - a_count)]
    rng.shuffle(letters)
    return "".join(letters)


def run_cli(argv: list[str]) -> None:
    from gpt3d.cli import main
    assert main(argv) == 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    tok = make_tokenizer(root / "tok")
    common = ["tiny-test", "--set", "model.vocab_size=300", "--set", f"data.tokenizer_dir={tok}", "--set",
              "train.threads=1", "--set", "model.n_layers=2", "--set", "model.d_model=64", "--set",
              "model.n_heads=4", "--set", "train.global_batch_size=16", "--set", "train.micro_batch_size=16",
              "--set", "optim.lr=3e-3", "--set", "optim.warmup_steps=5"]
    return root, tok, common


def engine(run_dir):
    from gpt3d.checkpoint.store import resolve_checkpoint_path
    from gpt3d.inference import InferenceEngine
    return InferenceEngine.load(resolve_checkpoint_path(run_dir))


def encoders(tok: str):
    from gpt3d.config.finetune import ChatTemplate, ClassifyConfig
    from gpt3d.data.tokenizer import load_tokenizer
    from gpt3d.finetune.examples import Encoders
    return Encoders(load_tokenizer(tok), ChatTemplate(), ClassifyConfig())


def test_sft_learns_an_instruction(setup):
    from gpt3d.inference import SamplingConfig
    root, tok, common = setup
    rng = random.Random(0)
    answer = lambda w: "yes" if w[0] in "abc" else "no"  # noqa: E731
    train = [{"prompt": w, "completion": answer(w)} for w in (word(rng) for _ in range(256))]
    run_cli(["finetune", *common, "--data", write_jsonl(root / "sft.jsonl", train), "--objective", "sft",
             "--steps", "200", "--out", str(root / "sft")])
    held_out = [word(random.Random(100 + i)) for i in range(40)]
    enc = encoders(tok)
    out = engine(root / "sft").generate([enc.prompt_ids({"prompt": w}, "") for w in held_out],
                                        SamplingConfig(max_new_tokens=4, temperature=0, eos_token_id=enc.tok.eod_id))
    right = sum(enc.tok.decode(c.tokens).startswith(answer(w) + "\n") for w, c in zip(held_out, out))
    assert right / len(held_out) >= 0.9, f"{right}/{len(held_out)} held-out answers right"


@pytest.fixture(scope="module")
def reward_model(setup):
    root, tok, common = setup
    rng = random.Random(1)
    rows = [{"prompt": word(rng), "completions": [completion(rng, k) for k in (3, 1, 0)]} for _ in range(256)]
    run_cli(["finetune", *common, "--data", write_jsonl(root / "rm.jsonl", rows), "--objective", "reward",
             "--steps", "60", "--out", str(root / "rm")])
    return root / "rm"


def test_reward_model_learns_a_preference(setup, reward_model):
    from gpt3d.checkpoint.store import resolve_checkpoint_path
    from gpt3d.finetune.scoring import RewardModel
    _, tok, _ = setup
    rm = RewardModel(str(resolve_checkpoint_path(reward_model)))
    enc = encoders(tok)
    rng, right, total = random.Random(2), 0, 0
    for _ in range(40):
        better, worse = sorted(rng.sample(range(4), 2), reverse=True)
        comps = [enc.ids(completion(rng, better)) + enc.end(), enc.ids(completion(rng, worse)) + enc.end()]
        scores = rm.score(enc.prompt_ids({"prompt": word(rng)}, ""), comps)
        right += scores[0] > scores[1]
        total += 1
    assert right / total >= 0.9, f"held-out pairwise accuracy {right}/{total}"
    last = json.loads((reward_model / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["accuracy"] >= 0.9 and last["reward_margin"] > 0  # the training metrics say the same


def policy_stats(run_dir, reference, rm, enc, prompts):
    """(mean reward, mean KL to the reference) of one sampled completion per prompt."""
    from gpt3d.inference import SamplingConfig
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.0, seed=7, eos_token_id=enc.tok.eod_id, logprobs=True)
    out = engine(run_dir).generate(prompts, sampling)
    ref = reference.score([(p, c.tokens) for p, c in zip(prompts, out)])
    rewards = [rm.score(p, [c.tokens])[0] for p, c in zip(prompts, out)]
    kls = [sum(c.logprobs) - r.logprob for c, r in zip(out, ref)]
    return sum(rewards) / len(rewards), sum(kls) / len(kls)


def policy_rows(rng: random.Random) -> list[dict]:
    return [{"prompt": word(rng), "completion": completion(rng, rng.choice((0, 0, 1, 1, 2)))} for _ in range(256)]


@pytest.fixture(scope="module")
def sft_policy(setup):
    """An SFT policy whose completions hold 0 to 2 letters 'a' (the reward model prefers more)."""
    root, _, common = setup
    sft = policy_rows(random.Random(3))
    run_cli(["finetune", *common, "--data", write_jsonl(root / "policy.jsonl", sft), "--objective", "sft",
             "--steps", "60", "--out", str(root / "policy")])
    return root / "policy"


def test_dpo_raises_the_reward_with_bounded_kl(setup, reward_model, sft_policy):
    from gpt3d.checkpoint.store import resolve_checkpoint_path
    from gpt3d.finetune.plot import write_reward_kl_plot
    from gpt3d.finetune.scoring import RewardModel
    root, tok, common = setup
    rng = random.Random(3)
    policy_rows(rng)  # the preference pairs continue the stream the policy's data came from
    pairs = []
    for _ in range(256):
        hi, lo = rng.choice([(2, 0), (3, 1), (2, 1), (1, 0)])
        pairs.append({"prompt": word(rng), "chosen": completion(rng, hi), "rejected": completion(rng, lo)})
    run_cli(["finetune", *common, "--from", str(root / "policy"), "--data", write_jsonl(root / "dpo.jsonl", pairs),
             "--objective", "dpo", "--set", "finetune.dpo.beta=0.5", "--set", "optim.lr=1e-3", "--steps",
             str(DPO_STEPS), "--save-interval", str(EVERY), "--set", "checkpoint.keep_last=10",
             "--out", str(root / "dpo")])
    rm = RewardModel(str(resolve_checkpoint_path(reward_model)))
    enc = encoders(tok)
    prompts = [enc.prompt_ids({"prompt": word(random.Random(500 + i))}, "") for i in range(48)]
    reference = engine(root / "policy")
    steps, rewards, kls = [0], *[[v] for v in policy_stats(root / "policy", reference, rm, enc, prompts)]
    for step in range(EVERY, DPO_STEPS + 1, EVERY):
        reward, kl = policy_stats(root / "dpo" / "checkpoints" / f"step_{step:08d}", reference, rm, enc, prompts)
        steps.append(step), rewards.append(reward), kls.append(kl)
    plot = write_reward_kl_plot(steps, rewards, kls, root / "dpo" / "reward_kl.png", "DPO")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rewards[-1] >= rewards[0] + MARGIN, f"reward by step {list(zip(steps, rewards))}, KL {kls}"
    last = json.loads((root / "dpo" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["reward_accuracy"] > 0.5 and last["reward_margin"] > 0
    assert max(kls) <= KL_BOUND, f"KL by step {list(zip(steps, kls))}, reward {rewards}"


def test_ppo_ptx_raises_the_reward_with_bounded_kl(setup, reward_model, sft_policy):
    """`gpt3d align` from the SFT policy against the reward model, with pretraining-gradient mixing: held-out mean
    reward up by PPO_MARGIN within PPO_STEPS steps, KL to the reference below KL_BOUND, the plot written by the run."""
    from gpt3d.checkpoint.store import resolve_checkpoint_path
    from gpt3d.data.indexed_dataset import write_indexed_dataset
    from gpt3d.finetune.scoring import RewardModel
    root, tok, common = setup
    enc = encoders(tok)
    rng = random.Random(6)
    text = [enc.ids(" ".join(word(rng, 5) for _ in range(40))) for _ in range(64)]
    write_indexed_dataset(root / "ptx", text, 300)
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": word(rng)} for _ in range(256)])
    run_cli(["align", *common, "--policy", str(sft_policy), "--reward", str(reward_model), "--prompts", prompts,
             "--ptx-data", str(root / "ptx"), "--set", "finetune.ppo.ptx_coef=0.1", "--set",
             "finetune.ppo.max_new_tokens=8", "--set", "finetune.ppo.kl_coef=0.2", "--set", "optim.lr=5e-4",
             "--steps", str(PPO_STEPS), "--save-interval", str(PPO_EVERY), "--set", "checkpoint.keep_last=10",
             "--out", str(root / "ppo")])
    assert (root / "ppo" / "reward_kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rm = RewardModel(str(resolve_checkpoint_path(reward_model)))
    held_out = [enc.prompt_ids({"prompt": word(random.Random(500 + i))}, "") for i in range(48)]
    reference = engine(sft_policy)
    steps, rewards, kls = [0], *[[v] for v in policy_stats(sft_policy, reference, rm, enc, held_out)]
    for step in range(PPO_EVERY, PPO_STEPS + 1, PPO_EVERY):
        reward, kl = policy_stats(root / "ppo" / "checkpoints" / f"step_{step:08d}", reference, rm, enc, held_out)
        steps.append(step), rewards.append(reward), kls.append(kl)
    assert rewards[-1] >= rewards[0] + PPO_MARGIN, f"reward by step {list(zip(steps, rewards))}, KL {kls}"
    assert max(kls) <= KL_BOUND, f"KL by step {list(zip(steps, kls))}, reward {rewards}"
    records = [json.loads(line) for line in (root / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, PPO_STEPS + 1))
    assert all(k in records[-1] for k in ("reward", "kl", "clip_fraction", "entropy", "value_loss"))
