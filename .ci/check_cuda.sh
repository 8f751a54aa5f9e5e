#!/usr/bin/env bash
# Compile-check every csrc/**/*.cu with nvcc for sm_80 and sm_90 (torch-free sources: seconds each). Fails on any error.
# Usage: bash .ci/check_cuda.sh        (NVCC=/path/to/nvcc to choose the compiler; default: nvcc on PATH, else
#                                       /usr/local/bin/nvcc, else /usr/local/cuda/bin/nvcc)
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC="${NVCC:-$(command -v nvcc || true)}"
for candidate in /usr/local/bin/nvcc /usr/local/cuda/bin/nvcc; do
  [[ -n "$NVCC" ]] && break
  [[ -x "$candidate" ]] && NVCC="$candidate"
done
if [[ -z "$NVCC" || ! -x "$NVCC" ]]; then
  echo "check_cuda: nvcc not found; install the CUDA toolkit or set NVCC=/path/to/nvcc" >&2
  exit 1
fi

mapfile -t sources < <(find csrc -name '*.cu' | sort)
if [[ ${#sources[@]} -eq 0 ]]; then
  echo "check_cuda: no .cu files under csrc/" >&2
  exit 1
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
failed=0
for arch in sm_80 sm_90; do
  for src in "${sources[@]}"; do
    obj="$out/${arch}_$(echo "$src" | tr '/' '_').o"
    if "$NVCC" -c -arch="$arch" -std=c++17 -O3 -I csrc "$src" -o "$obj"; then
      echo "ok      $arch $src"
    else
      echo "FAILED  $arch $src" >&2
      failed=1
    fi
  done
done
exit "$failed"
