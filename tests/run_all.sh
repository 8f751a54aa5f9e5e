#!/usr/bin/env bash
# The test command of the README and of CI: set up (idempotent), compile-check the CUDA kernels, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launchers/setup_env.sh --test
bash .ci/check_cuda.sh
PYTHON=python bash tests/gpu/run.sh --check  # the GPU check's syntax, imports and test list (it runs on a GPU)
exec python -m pytest tests "$@"
