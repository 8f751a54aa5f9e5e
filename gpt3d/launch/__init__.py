"""Starting ranks: discovering what an external launcher (torchrun, srun, mpirun) set up (env.py)."""
