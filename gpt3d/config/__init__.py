"""Typed, validated configs, one dataclass per component; see run.py for loading."""
from .base import ConfigError
from .checkpoint import CheckpointConfig
from .data import DataConfig, DatasetSource
from .model import ModelConfig
from .optim import OptimConfig
from .parallel import ParallelConfig
from .presets import PRESETS, paper_parameter_count, preset
from .run import RunConfig, build_config, load_config, load_raw, save_config
from .sparse import SparseAttentionConfig
from .train import TrainConfig

__all__ = [
    "ConfigError", "CheckpointConfig", "DataConfig", "DatasetSource", "ModelConfig", "OptimConfig", "ParallelConfig",
    "PRESETS", "paper_parameter_count", "preset", "RunConfig", "build_config", "load_config", "load_raw", "save_config",
    "SparseAttentionConfig", "TrainConfig",
]
