"""Fine-tuning and alignment config: the data file, the checkpoint to start from, and one sub-config per objective.

`train.objective` picks the objective (pretrain, sft, classify, reward, dpo, ppo); this section holds what the
fine-tuning objectives need. See docs/finetune-and-align.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .align import PPOConfig
from .base import field, require

OBJECTIVES = ("pretrain", "sft", "classify", "reward", "dpo", "ppo")
# The extra output heads (name -> width) an objective adds to the last pipeline stage.
CLASSIFY_HEAD, REWARD_HEAD, VALUE_HEAD = "classify", "reward", "value"


@dataclass
class ChatTemplate:
    """How {"messages": [...]} and {"prompt", "completion"} examples become one token stream. Each message is
    rendered as <role prefix> + content + end; the loss covers the assistant messages' content and end only."""
    system: str = field("<|system|>\n", doc="text before a system message's content")
    user: str = field("<|user|>\n", doc="text before a user message's content (and before a bare prompt)")
    assistant: str = field("<|assistant|>\n", doc="text before an assistant message's content (and a completion)")
    end: str = field("\n", doc="text after every message (learned after assistant messages)")
    eod: bool = field(True, doc="append <|endoftext|> after the last assistant message (learned)")


@dataclass
class SFTConfig:
    template: ChatTemplate = field(default_factory=ChatTemplate, doc="chat template (documented in the docs)")
    pack: bool = field(True, doc="pack several examples per sequence (positions reset, attention never crosses "
                                 "examples); false: one example per sequence, padded")


@dataclass
class ClassifyConfig:
    """GPT-1's discriminative fine-tuning (Radford et al. 2018, section 3.3)."""
    task: Literal["classification", "entailment", "similarity", "multiple_choice"] = field(
        "classification", doc="input transformation: classification {text,label}; entailment {premise,hypothesis,"
                              "label}; similarity {text_a,text_b,label} (both orders, final states summed); "
                              "multiple_choice {context,choices,label}")
    num_classes: int = field(2, doc="classes of the linear head (multiple_choice: ignored, the head scores choices)")
    lm_coef: float = field(0.5, doc="lambda of L = L_task + lambda * L_lm (GPT-1: 0.5); 0 disables the LM loss")
    start: str = field("<|start|>", doc="start token text")
    delim: str = field("<|delim|>", doc="delimiter token text")
    extract: str = field("<|extract|>", doc="extract token text; the head reads the final state of its last token")

    def __post_init__(self):
        require(self.num_classes >= 2, "finetune.classify.num_classes", f"must be >= 2, got {self.num_classes}")
        require(self.lm_coef >= 0, "finetune.classify.lm_coef", f"must be >= 0, got {self.lm_coef}")
        for name in ("start", "delim", "extract"):
            require(getattr(self, name) != "", f"finetune.classify.{name}", "must be a non-empty text")


@dataclass
class DPOConfig:
    """Direct preference optimisation against the frozen starting checkpoint (Rafailov et al. 2023)."""
    beta: float = field(0.1, doc="beta of the DPO loss -log sigmoid(beta * (policy - reference log-ratio margin))")

    def __post_init__(self):
        require(self.beta > 0, "finetune.dpo.beta", f"must be positive, got {self.beta}")


@dataclass
class FinetuneConfig:
    data: Optional[str] = field(None, doc="JSONL file of examples (required for every objective but pretrain)")
    init_from: Optional[str] = field(
        None, doc="checkpoint (or run directory) whose weights start the run (`--from`); heads it lacks start fresh "
                  "from (seed, name); also the frozen DPO reference")
    overlong: Literal["truncate", "refuse"] = field(
        "truncate", doc="an example longer than train.seq_len: truncate (from the end; the count is reported) or "
                        "refuse the data file")
    sft: SFTConfig = field(default_factory=SFTConfig, doc="supervised fine-tuning")
    classify: ClassifyConfig = field(default_factory=ClassifyConfig, doc="GPT-1 classification fine-tuning")
    dpo: DPOConfig = field(default_factory=DPOConfig, doc="DPO")
    ppo: PPOConfig = field(default_factory=PPOConfig, doc="PPO-ptx (`gpt3d align`)")

    def heads(self, objective: str) -> dict[str, int]:
        """The extra heads (name -> output width) `objective` trains."""
        if objective == "classify":
            width = 1 if self.classify.task == "multiple_choice" else self.classify.num_classes
            return {CLASSIFY_HEAD: width}
        if objective == "reward":
            return {REWARD_HEAD: 1}
        if objective == "ppo":
            return {VALUE_HEAD: 1}  # PPO's value function, on the policy's final hidden states
        return {}

    def check_run(self, objective: str, model) -> None:
        """What a fine-tuning objective needs from the rest of the run config."""
        require(self.data is not None, "finetune.data",
                f"train.objective={objective} reads a JSONL file of examples; pass "
                f"{'--prompts' if objective == 'ppo' else '--data'} FILE.jsonl")
        require(model.attention_pattern == "dense", "model.attention_pattern",
                f"train.objective={objective} packs examples with per-example attention masks, which the "
                f"block-sparse layers do not take; use model.attention_pattern=dense")
