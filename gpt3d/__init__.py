"""gpt3d: GPT-3-class training with tensor, pipeline and data parallelism."""
__version__ = "0.1.0"
