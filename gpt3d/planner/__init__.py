"""`gpt3d plan`: a performance and memory model that picks the parallel layout of a run before the cluster is rented.

Modules: hardware (GPU specs, measured CPU spec), efficiency (GEMM efficiency curve), activations + memory (memory per
GPU, fit_advice.check_fits), communication, schedule (pipeline bubble), performance (step time), search (ranking),
report + cli. See docs/planner.md for the model and its constants, docs/dryrun.md for its check against gpt3d dryrun.
"""
