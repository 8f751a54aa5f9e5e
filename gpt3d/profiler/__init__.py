"""Per-layer throughput profiler (`gpt3d profile`): time, FLOPs, TFLOP/s, MFU and memory for every layer, pipeline
stage and communication group of a few training steps. See docs/profiler.md."""
from .report import build_report, print_table, theoretical_bubble, write_outputs
from .session import ProfileOptions, profile_rank, run_profile
from .step import StepProfile, TrainerProfiler

__all__ = ["ProfileOptions", "StepProfile", "TrainerProfiler", "build_report", "print_table", "profile_rank",
           "run_profile", "theoretical_bubble", "write_outputs"]
