#!/usr/bin/env bash
# Set up gpt3d on a fresh machine: torch (the CPU wheel when none is installed), the package with its C++ kernels,
# and with --test everything the test suite runs against (real SLURM, Open MPI, megatron-core, DeepSpeed, transformers).
# Idempotent: a second run only checks. A GPU user who already has a CUDA torch keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
with_test=0
[[ "${1:-}" == "--test" ]] && with_test=1

PIP="python -m pip --disable-pip-version-check -q"
if ! python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch 2.13.0 (CPU wheel)"
  $PIP install torch==2.13.0
fi

echo "setup: installing gpt3d and building its C++ kernels (about a minute the first time; ninja rebuilds only changes)"
$PIP install --no-build-isolation -e .

if [[ $with_test == 1 ]]; then
  $PIP install pytest pytest-timeout transformers tensorboard psutil mpi4py megatron-core trl==1.16.0
  python -c "import deepspeed" 2>/dev/null || DS_BUILD_OPS=0 $PIP install deepspeed
  missing=()
  for tool in slurmctld slurmd sbatch munged mpirun; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "setup: installing Debian packages for ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge openmpi-bin libopenmpi-dev >/dev/null
  fi
fi
python -c "import torch, gpt3d.kernels as k; print(f'setup: torch {torch.__version__}, gpt3d kernels: {k.cpu_isa()}')"
