"""Evaluation: GPT-3's zero/one/few-shot protocol (`gpt3d eval`), built-in offline tasks, user YAML/JSONL tasks, the
lm-evaluation-harness backend (gpt3d.eval.lm_eval_backend) and in-context-learning diagnostics."""
