"""FLOPs per cycle per core for the CPUs these machines have had (vendor manuals' vector widths and FMA pipes)."""
import pytest
import torch

from gpt3d.profiler.cpu_peak import flops_per_cycle, measured_mhz

AVX2 = {"avx", "avx2", "fma"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl"}
AVX512_BF16 = AVX512 | {"avx512_bf16"}


@pytest.mark.parametrize("name, flags, vendor, family, fp32, bf16", [
    # Intel Xeon (Sapphire Rapids) with AMX: bf16 GEMMs on the tiles
    ("xeon-amx", AVX512_BF16 | {"amx_bf16", "amx_tile"}, "GenuineIntel", 6, 64, 1024),
    ("xeon-avx512-bf16", AVX512_BF16, "GenuineIntel", 6, 64, 128),
    ("xeon-avx512", AVX512, "GenuineIntel", 6, 64, 64),  # no bf16 dot product: bf16 GEMMs compute in fp32
    ("epyc-zen3-avx2", AVX2, "AuthenticAMD", 0x19, 32, 32),  # Zen 3 shares Zen 4's family and has no AVX-512
    ("epyc-zen4", AVX512_BF16, "AuthenticAMD", 0x19, 32, 64),  # AVX-512 on 256-bit pipes: two cycles per FMA
    ("epyc-zen5", AVX512_BF16, "AuthenticAMD", 0x1a, 64, 128),  # full-width 512-bit pipes
    ("sse-only", {"sse", "sse2"}, "GenuineIntel", 6, 16, 16),
])
def test_flops_per_cycle(name, flags, vendor, family, fp32, bf16):
    assert flops_per_cycle(flags, torch.float32, vendor, family)[0] == fp32, name
    assert flops_per_cycle(flags, torch.bfloat16, vendor, family)[0] == bf16, name


def test_clock_probe_runs_its_dependent_adds():
    """8 n additions of x to itself from x = 1: 2^(8n) modulo 2^64 (so nothing was skipped or folded)."""
    from gpt3d.kernels._ext import has_op
    assert has_op("dependent_adds"), "gpt3d._C is not built (pip install -e . builds it): the probe must exist"
    probe = torch.ops.gpt3d_C.dependent_adds
    assert [probe(n) for n in (0, 1, 7, 8, 1000)] == [1, 256, 1 << 56, 0, 0]
    with pytest.raises(RuntimeError, match="dependent_adds: n must be >= 0, got -1"):
        probe(-1)
    # one add a cycle: a physical clock, not a measure of speed (the bounds only catch a wrong cycle count)
    assert 300 < measured_mhz() < 10_000
