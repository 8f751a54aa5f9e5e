"""A dtype the device cannot run is refused with one clear error before any work starts (no silent fp32 fallback).
This CPU runs bf16 and fp16; float8 is a dtype it cannot train in (no LayerNorm, softmax or GELU kernels), so the
probe meets a real failing op."""
import pytest
import torch

from gpt3d.train.precision import PrecisionError, compute_dtype, probe, require_dtype_runs


def test_a_dtype_the_cpu_cannot_run_gets_a_clear_error():
    with pytest.raises(PrecisionError) as err:
        require_dtype_runs("fp8", torch.float8_e4m3fn, torch.device("cpu"))
    assert str(err.value) == (
        "train.dtype=fp8: this cpu device cannot train in torch.float8_e4m3fn (\"LayerNormKernelImpl\" not implemented "
        "for 'Float8_e4m3fn'); use another train.dtype (fp32 runs everywhere) or a device that supports fp8")


@pytest.mark.parametrize("name", ["bf16", "fp16", "fp32"])
def test_the_configurable_dtypes_run_on_this_cpu(name):
    probe(compute_dtype(name), torch.device("cpu"))
    require_dtype_runs(name, compute_dtype(name), torch.device("cpu"))
