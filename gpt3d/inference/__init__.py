"""Inference: a KV-cached, tensor- and pipeline-parallel decoding engine (`gpt3d generate`), reused by evaluation
(gpt3d/eval/) and by PPO rollouts (gpt3d/finetune/).

    from gpt3d.inference import InferenceEngine, SamplingConfig
    engine = InferenceEngine.load("runs/x/checkpoints/step_00000100")       # one process, or every rank of a job
    out = engine.generate([[1, 2, 3], [4, 5]], SamplingConfig(max_new_tokens=16, temperature=0))
    out[0].tokens, out[0].finish_reason
"""
from gpt3d.config.generate import SamplingConfig

from .engine import Completion, InferenceEngine

__all__ = ["Completion", "InferenceEngine", "SamplingConfig"]
