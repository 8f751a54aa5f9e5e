#!/usr/bin/env bash
# The test command of the README and of CI: set up (idempotent, into .venv), compile-check the CUDA kernels, run every
# test with .venv's Python.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launchers/setup_env.sh --test
bash .ci/check_cuda.sh
exec .venv/bin/python -m pytest tests "$@"
