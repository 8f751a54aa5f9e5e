"""`gpt3d dryrun`: the real code of one rank of a full-size job under fake tensors (no memory, no GPU), measuring its
peak memory per category (tracker.py), next to the GPU and the planner (compare.py). See docs/dryrun.md."""
