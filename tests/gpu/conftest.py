"""Shared pieces of the CUDA tests (tests/gpu/, run by `bash tests/gpu/run.sh` on a GPU machine).

Every test here needs a CUDA device and skips, saying so, when none is visible. Where one is visible, a missing CUDA
build of gpt3d._C is a failure, never a skip. Measured numbers are appended as JSON lines to $GPT3D_GPU_RECORDS when
run.sh sets it; tests/gpu/report.py turns them into the table and $OUT/gpu_report.json.
"""
from __future__ import annotations

import pytest
import torch

NO_CUDA = ("no CUDA device visible (torch.cuda.is_available() is False): the GPU tests run on a GPU machine with "
           "`bash tests/gpu/run.sh`")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.fixture
def cuda_extension():
    """gpt3d._C built with the CUDA kernels (fails, never skips, when a GPU is present but the build lacks them)."""
    from gpt3d.kernels import _ext
    ext = _ext.extension()
    assert ext is not None, f"gpt3d._C is not importable ({_ext.extension.error}); run `bash tests/gpu/run.sh`"
    assert getattr(ext, "with_cuda", False), ("gpt3d._C was built without CUDA kernels (a CPU torch at build time?); "
                                              "rebuild with a CUDA torch: `bash tests/gpu/run.sh`")
    return ext
