"""The hardware peak of the CPU cores a run uses, the denominator of MFU on CPU:

    peak FLOP/s = cores x clock (Hz) x FLOPs per cycle per core for the widest vector unit and the dtype

FLOPs per cycle per core (two FMA pipes, the common server core; a one-pipe part has half, pass --peak-tflops there):
    fp32: AVX-512 2 x 16 lanes x 2 = 64; AVX2+FMA 2 x 8 x 2 = 32; otherwise SSE 2 x 4 x 2 = 16.
    bf16: AMX-BF16 1024 (one tile multiply per cycle); AVX512-BF16 128 (vdpbf16ps, twice the fp32 rate); otherwise the
          fp32 rate (bf16 GEMMs then compute in fp32).
    AMD Zen 4 (family 0x19) runs AVX-512 on 256-bit pipes, two cycles per 512-bit FMA: its AVX-512 rates are halved
    (fp32 32, bf16 64). Zen 5 (family 0x1a; EPYC 9005) has full-width 512-bit pipes and keeps the full rates.
Clock: the CPU's maximum frequency from cpufreq when the kernel exposes it. A VM has no cpufreq and its /proc/cpuinfo
gives the nominal clock, below the boost the cores run at (an EPYC VM reported 2.60 GHz and measured 3.97 GHz; its
bf16 GEMM then ran at 131% of a 2.60 GHz "peak"), so there the clock is measured: a chain of dependent integer adds
(csrc/cpu_clock/, one cycle each) timed on one core, best of 10, taken when above the reported clock. A core that runs
alone boosts highest, so the measured clock can only raise the peak, never flatter MFU. Cores: the threads the run
uses, at most the cores available to this process.
A measured GEMM rate is not a peak: ratios against it are reported apart, under their own name ("of GEMM").
"""
from __future__ import annotations

import functools
import os
import time

import torch

from gpt3d.cpuinfo import CpuInfo, cpu_info


CLOCK_PROBE_ADDS = 2_000_000  # x 8 dependent adds: 16 M cycles, about 4 ms at 4 GHz


@functools.lru_cache(maxsize=None)
def measured_mhz() -> float:
    """The clock of a busy core, measured (the module docstring); 0.0 without the built extension."""
    from gpt3d.kernels._ext import has_op
    if not has_op("dependent_adds"):
        return 0.0
    probe = torch.ops.gpt3d_C.dependent_adds
    probe(CLOCK_PROBE_ADDS)  # lets the core leave any idle clock first
    best = float("inf")
    for _ in range(10):  # the fastest run: preemption by another process only makes a run slower
        start = time.perf_counter()
        probe(CLOCK_PROBE_ADDS)
        best = min(best, time.perf_counter() - start)
    return 8 * CLOCK_PROBE_ADDS / best / 1e6


def _max_mhz(info: CpuInfo) -> tuple[float, str]:
    """(the cores' maximum clock in MHz, where it came from): cpufreq's, else the larger of /proc/cpuinfo's and the
    measured one."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            return int(f.read()) / 1000.0, "cpufreq maximum"
    except (OSError, ValueError):
        pass
    measured = measured_mhz()
    if measured > info.mhz:
        return measured, f"measured; /proc/cpuinfo says {info.mhz / 1000:.2f}"
    return info.mhz, "/proc/cpuinfo"


AMD_ZEN4_FAMILY = 0x19  # AVX-512 on 256-bit pipes (Zen 3 shares the family but has no AVX-512)


def flops_per_cycle(flags: set[str], dtype: torch.dtype, vendor: str = "", family: int = 0) -> tuple[int, str]:
    """(FLOPs per cycle per core, the unit it assumes) for `dtype` on a CPU with these /proc/cpuinfo flags, vendor id
    and family."""
    half_width = vendor == "AuthenticAMD" and family == AMD_ZEN4_FAMILY
    if dtype == torch.bfloat16:
        if "amx_bf16" in flags:
            return 1024, "AMX-BF16"
        if "avx512_bf16" in flags:
            return (64, "AVX512-BF16 on 256-bit pipes") if half_width else (128, "AVX512-BF16")
    if {"avx512f", "fma"} <= flags:
        return (32, "AVX-512 FMA x2 on 256-bit pipes") if half_width else (64, "AVX-512 FMA x2")
    if {"avx2", "fma"} <= flags:
        return 32, "AVX2 FMA x2"
    return 16, "SSE x2"


def cpu_peak_tflops(dtype: torch.dtype, threads: int) -> tuple[float, str]:
    """(peak TFLOP/s of the cores `threads` threads run on, how it was computed)."""
    info = cpu_info()
    mhz, clock = _max_mhz(info)
    cores = max(1, min(threads, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()))
    per_cycle, unit = flops_per_cycle(info.flags, dtype, info.vendor, info.family)
    peak = cores * mhz * 1e6 * per_cycle / 1e12
    return peak, (f"hardware peak {cores} cores x {mhz / 1000:.2f} GHz ({clock}) x {per_cycle} "
                  f"{str(dtype).replace('torch.', '')} FLOP/cycle ({unit}; {info.model})")
