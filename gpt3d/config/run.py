"""The root config of one run, and how it is loaded: preset < YAML file < --set overrides."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from .base import ConfigError, field, from_dict, load_yaml, require, to_dict
from .checkpoint import CheckpointConfig
from .data import DataConfig
from .finetune import FinetuneConfig
from .model import ModelConfig
from .optim import OptimConfig
from .parallel import ParallelConfig
from .presets import preset as preset_dict
from .train import TrainConfig

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass
class RunConfig:
    model: ModelConfig = field(doc="architecture")
    parallel: ParallelConfig = field(default_factory=ParallelConfig, doc="parallel layout")
    optim: OptimConfig = field(default_factory=OptimConfig, doc="optimizer and LR schedule")
    data: DataConfig = field(default_factory=DataConfig, doc="datasets and tokenizer")
    train: TrainConfig = field(default_factory=TrainConfig, doc="training loop")
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig, doc="checkpointing")
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig, doc="fine-tuning data and objectives")
    preset: Optional[str] = field(None, doc="the preset this config started from")

    def __post_init__(self):
        if self.train.seq_len is None:
            self.train.seq_len = self.model.seq_len
        require(self.train.seq_len <= self.model.seq_len, "train.seq_len",
                f"{self.train.seq_len} exceeds the position table (model.seq_len={self.model.seq_len}); "
                f"lower train.seq_len or raise model.seq_len")
        if self.model.attention_pattern != "dense":
            self.model.sparse.check_seq_len(self.train.seq_len, "train.seq_len")
        require(self.train.global_batch_size % self.train.micro_batch_size == 0, "train.global_batch_size",
                f"{self.train.global_batch_size} is not a multiple of train.micro_batch_size="
                f"{self.train.micro_batch_size}")
        if self.train.objective != "pretrain":
            self.finetune.check_run(self.train.objective, self.model)
            self.model.task_heads = self.finetune.heads(self.train.objective)
        if self.train.objective == "ppo":
            self.finetune.ppo.check_run(self)
        if self.parallel.pipeline_split is not None:
            require(sum(self.parallel.pipeline_split) == self.model.n_layers, "parallel.pipeline_split",
                    f"sums to {sum(self.parallel.pipeline_split)} layers; the model has {self.model.n_layers}")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'model.n_layers=4' -> (['model', 'n_layers'], 4); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set model.n_layers=4")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = load_yaml(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from None
    return parts, value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """A YAML path, or the name of a file in configs/ (with or without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (REPO_CONFIGS / f"{name_or_path}.yaml", REPO_CONFIGS / str(name_or_path)):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config: no such file {str(name_or_path)!r} (and no configs/{name_or_path}.yaml); "
                      f"pass a YAML path or a name from configs/")


def load_raw(name_or_path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> dict:
    """The merged mapping (preset, file, overrides) before validation."""
    data: dict[str, Any] = {}
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        try:
            loaded = load_yaml(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path}: expected a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    data = apply_overrides(data, overrides)
    name = data.get("preset")
    if name is not None:
        if not isinstance(name, str):
            raise ConfigError(f"preset: expected a preset name, got {name!r}")
        data = _deep_merge(preset_dict(name), data)
    return data


def build_config(data: dict) -> RunConfig:
    if "model" not in data:
        raise ConfigError("model: missing; name a preset (preset: tiny) or give model.n_layers, d_model, n_heads")
    return from_dict(RunConfig, data, "")


def load_config(name_or_path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load and validate a run config: preset (if named) < YAML file < `--set` overrides."""
    return build_config(load_raw(name_or_path, overrides))


def save_config(config: RunConfig, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
