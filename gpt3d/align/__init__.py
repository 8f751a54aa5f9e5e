"""Alignment with PPO-ptx (InstructGPT): rollouts from gpt3d's inference engine, a frozen reward model and reference,
KL-penalised rewards, GAE, clipped surrogate and value losses, pretraining-gradient mixing (docs/finetune-and-align.md)."""
