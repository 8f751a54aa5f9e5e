"""One module per framework run by benchmarks/peers.py; each defines `train(rank, job) -> list[float]` (the global
mean loss of every step) and calls common.timed_steps."""
