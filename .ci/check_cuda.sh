#!/usr/bin/env bash
# Compile-check every csrc/**/*.cu with nvcc for sm_80 and sm_90 (torch-free sources: seconds each), then compile the
# CUDA bindings (csrc/*/*_cuda_binding.cpp) against torch's CUDA headers with GPT3D_WITH_CUDA defined (syntax only: the
# CPU wheel ships c10/cuda headers but no CUDA libraries to link). Fails on any error.
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
# The bindings: every torch / c10::cuda API they use must exist in the installed torch's headers.
mapfile -t bindings < <(find csrc -name '*_cuda_binding.cpp' | sort)
read -r torch_include python_include < <("${PYTHON:-python}" -c "import os, sysconfig, torch; print(os.path.join(os.path.dirname(
    torch.__file__), 'include'), sysconfig.get_paths()['include'])")
cuda_include="${CUDA_HOME:-/usr/local/cuda}/include"
[[ -f "$cuda_include/cuda_runtime_api.h" ]] || cuda_include="$(dirname "$(dirname "$(readlink -f "$NVCC")")")/include"
for src in "${bindings[@]}"; do
  # C10_CUDA_NO_CMAKE_CONFIGURE_FILE: the CPU wheel lacks c10/cuda/impl/cuda_cmake_macros.h (it only sets export macros).
  if "${CXX:-g++}" -fsyntax-only -std=c++20 -DGPT3D_WITH_CUDA -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE \
      -DTORCH_EXTENSION_NAME=_C -I csrc -I "$torch_include" -I "$torch_include/torch/csrc/api/include" \
      -I "$python_include" -I "$cuda_include" "$src"; then
    echo "ok      binding $src"
  else
    echo "FAILED  binding $src" >&2
    failed=1
  fi
done
exit "$failed"
