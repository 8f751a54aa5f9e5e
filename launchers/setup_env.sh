#!/usr/bin/env bash
# Set up gpt3d on a fresh machine: torch (the CPU wheel when none is installed), the package with its C++ kernels,
# and with --test everything the test suite runs against (launchers/requirements-test.txt: pinned megatron-core,
# DeepSpeed, transformers, ...; real SLURM and Open MPI from Debian packages).
#
# Where it installs: always through `.venv/` in the repository, so `.venv/bin/gpt3d` and `.venv/bin/python` work from a
# bare shell afterwards.
#   - inside an active virtual environment ($VIRTUAL_ENV) or conda environment ($CONDA_PREFIX), .venv is a link to it;
#   - otherwise .venv is created with `python3 -m venv --system-site-packages` (GPT3D_PYTHON picks another base
#     interpreter): pip never writes into a PEP 668 "externally managed" system Python (Debian 12+, Ubuntu 24.04), and
#     a torch / CUDA stack the machine already has is reused instead of downloaded again.
# Idempotent: a second run only checks. A GPU user who already has a CUDA torch keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
with_test=0
[[ "${1:-}" == "--test" ]] && with_test=1

active_env="${VIRTUAL_ENV:-${CONDA_PREFIX:-}}"
if [[ ! -e .venv ]]; then
  if [[ -n "$active_env" ]]; then
    echo "setup: using the active environment $active_env (.venv links to it)"
    ln -s "$active_env" .venv
  else
    base="${GPT3D_PYTHON:-$(command -v python3 || command -v python)}"
    echo "setup: creating .venv from $base (--system-site-packages)"
    if ! "$base" -m venv --system-site-packages .venv; then
      rm -rf .venv
      if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then  # Debian ships venv separately
        echo "setup: installing python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        "$base" -m venv --system-site-packages .venv
      else
        echo "setup: error: '$base -m venv' failed; install your distribution's venv package (Debian/Ubuntu:" \
             "sudo apt-get install python3-venv) or activate a virtual environment, then rerun" >&2
        exit 1
      fi
    fi
  fi
fi
PY="$PWD/.venv/bin/python"
PIP="$PY -m pip --disable-pip-version-check -q"
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch 2.13.0 (CPU wheel)"
  $PIP install torch==2.13.0
fi
if ! "$PY" -c "import setuptools, wheel" 2>/dev/null; then
  $PIP install "setuptools>=64" wheel
fi

echo "setup: installing gpt3d and building its C++ kernels (about a minute the first time; ninja rebuilds only changes)"
$PIP install --no-build-isolation -e .

if [[ $with_test == 1 ]]; then
  DS_BUILD_OPS=0 $PIP install -r launchers/requirements-test.txt
  missing=()
  for tool in slurmctld slurmd sbatch munged mpirun; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "setup: installing Debian packages for ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge openmpi-bin libopenmpi-dev >/dev/null
  fi
fi
"$PY" -c "import torch, gpt3d.kernels as k; print(f'setup: torch {torch.__version__}, gpt3d kernels: {k.cpu_isa()}')"
echo "setup: done; run gpt3d as .venv/bin/gpt3d (or '. .venv/bin/activate', then gpt3d)"
