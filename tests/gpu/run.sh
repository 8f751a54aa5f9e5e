#!/usr/bin/env bash
# The one-shot GPU check: build gpt3d._C with its CUDA kernels, run the CUDA tests (tests/gpu/test_*.py: kernel parity
# at GPT-3 shapes in fp32/bf16/fp16, 20 steps of gpt3-small in bf16, TP2 over NCCL when 2+ GPUs are visible), run the
# kernel benchmarks (tests/gpu/bench_kernels.py), print a table and, when $OUT is set, write $OUT/gpu_report.json.
#
#   bash tests/gpu/run.sh            on a GPU machine, from a fresh copy of the repository; under 8 minutes on one H200
#                                    with 16 cores. Uses the machine's own CUDA torch, nvcc, pybind11 and transformers;
#                                    downloads and installs nothing. PYTHON=... picks the interpreter (default python3).
#   bash tests/gpu/run.sh --check    anywhere (CI, on the CPU): syntax and imports of every file here, and the list of
#                                    tests and benchmarks the full run would run.
#
# Exit status: 0 when every stage passed; 1 when a test or benchmark failed; 2 when the build failed or no GPU is
# visible. Each stage gets a share of GPT3D_GPU_BUDGET_S seconds (default 460) so the report is always written.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
GPU_FILES=(tests/gpu/conftest.py tests/gpu/records.py tests/gpu/test_cuda_kernels.py tests/gpu/test_cuda_training.py
           tests/gpu/bench_kernels.py tests/gpu/report.py)

if [[ "${1:-}" == "--check" ]]; then
  set -e
  bash -n tests/gpu/run.sh
  "$PY" -m py_compile "${GPU_FILES[@]}"
  "$PY" -c "import tests.gpu.test_cuda_kernels, tests.gpu.test_cuda_training, tests.gpu.bench_kernels, tests.gpu.report"
  echo "gpu check --check: syntax and imports OK. The full run (on a GPU) would run these tests:"
  "$PY" -m pytest tests/gpu --collect-only -q | grep '::'
  echo "and these benchmarks:"
  "$PY" -m tests.gpu.bench_kernels --list | sed 's/^/  /'
  exit 0
fi
[[ $# -eq 0 ]] || { echo "usage: bash tests/gpu/run.sh [--check]" >&2; exit 2; }

log() { echo "[gpu-check $(date -u +%H:%M:%S)] $*"; }
DEADLINE=$((SECONDS + ${GPT3D_GPU_BUDGET_S:-460}))
budget() {  # seconds for the next stage: at most $1, leaving 20 s for the report
  local left=$((DEADLINE - SECONDS - 20))
  ((left < $1)) && echo $((left > 10 ? left : 10)) || echo "$1"
}
WORK="$(mktemp -d)"
RECORDS="$WORK/records.jsonl"
JUNIT="$WORK/junit.xml"
: >"$RECORDS"
finish() {  # the table, the JSON report and the logs, whatever happened before
  "$PY" -m tests.gpu.report "$RECORDS" "$JUNIT" ${OUT:+--json "$OUT/gpu_report.json"} --meta "gpu=$GPU" \
    --meta "torch=$TORCH" --meta "build_s=${BUILD_S:-}" --meta "exit_status=$1" --meta "wall_s=$SECONDS"
  if [[ -n "${OUT:-}" ]]; then
    cp "$WORK"/*.log "$RECORDS" "$OUT"/ 2>/dev/null || true
    [[ -f "$JUNIT" ]] && cp "$JUNIT" "$OUT"/
  fi
  log "done in ${SECONDS}s, exit status $1"
  exit "$1"
}
[[ -n "${OUT:-}" ]] && mkdir -p "$OUT"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu check: no CUDA device visible to $PY (torch.cuda.is_available() is False); run it on a GPU machine, or" \
       "use --check on the CPU" >&2
  exit 2
fi
GPU="$("$PY" -c "import torch; n = torch.cuda.device_count(); print(f'{n} x {torch.cuda.get_device_name(0)}')")"
TORCH="$("$PY" -c "import torch; print(torch.__version__, 'cuda', torch.version.cuda)")"
log "$GPU; torch $TORCH; nvcc: $(nvcc --version 2>/dev/null | tail -1)"

# 1. Build gpt3d._C in place with the CUDA sources, for this GPU's architecture only (faster, and the native code).
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$("$PY" -c \
  "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
log "building gpt3d._C (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
rm -rf build gpt3d/_C*.so
start=$SECONDS
timeout "$(budget 240)" "$PY" setup.py build_ext --inplace >"$WORK/build.log" 2>&1
rc=$?
BUILD_S=$((SECONDS - start))
if [[ $rc -ne 0 ]] || ! "$PY" -c "import gpt3d._C as C, sys; sys.exit(0 if C.with_cuda else 1)" 2>>"$WORK/build.log"
then
  tail -60 "$WORK/build.log"
  log "BUILD FAILED (status $rc): gpt3d._C with CUDA kernels is not importable; log: $WORK/build.log"
  finish 2
fi
log "built in ${BUILD_S}s"

# 2. The CUDA tests (skip only without a GPU; here a missing kernel fails).
export GPT3D_GPU_RECORDS="$RECORDS" GPT3D_GPU_CACHE="$WORK/cache"
log "running tests/gpu"
timeout "$(budget 300)" "$PY" -m pytest tests/gpu -v -rs --junitxml="$JUNIT" 2>&1 | tee "$WORK/pytest.log"
test_rc=${PIPESTATUS[0]}

# 3. Kernel benchmarks (numbers only: nothing here asserts a speed).
log "running tests/gpu/bench_kernels.py"
timeout "$(budget 200)" "$PY" -m tests.gpu.bench_kernels 2>&1 | tee "$WORK/bench.log"
bench_rc=${PIPESTATUS[0]}

[[ $test_rc -eq 0 && $bench_rc -eq 0 ]] && finish 0
log "tests exit status $test_rc, benchmarks exit status $bench_rc"
finish 1
