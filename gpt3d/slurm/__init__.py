"""SLURM: render and submit batch jobs (submit.py), inspect and cancel them (status.py, cancel.py), and stop cleanly
before the time limit or on preemption (preemption.py)."""
