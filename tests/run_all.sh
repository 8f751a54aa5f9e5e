#!/usr/bin/env bash
# The test command of the README and of CI: set up (idempotent, into .venv), compile-check the CUDA kernels, run every
# test with .venv's Python.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launchers/setup_env.sh --test
PYTHON=.venv/bin/python bash .ci/check_cuda.sh
PYTHON=.venv/bin/python bash tests/gpu/run.sh --check  # the GPU check's syntax, imports and test list (it runs on a GPU)
exec .venv/bin/python -m pytest tests "$@"
