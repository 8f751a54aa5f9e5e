"""Fixture of the sparse attention tests: the built extension is required (its absence fails, never skips)."""
from __future__ import annotations

import pytest

from gpt3d.kernels import _ext


@pytest.fixture
def fused_kernel():
    """Fail (not skip) when the extension with the sparse attention op is missing: the fused tests must run."""
    if not _ext.has_op("sparse_attention_forward"):
        pytest.fail("gpt3d._C with torch.ops.gpt3d_C.sparse_attention_forward is not built "
                    f"({_ext.extension.error or 'op missing'}); run: cd /work/main && python setup.py build_ext --inplace")
