"""The hardware peak of the CPU cores a run uses, the denominator of MFU on CPU:

    peak FLOP/s = cores x clock (Hz) x FLOPs per cycle per core for the widest vector unit and the dtype

FLOPs per cycle per core (two FMA pipes, the common server core; a one-pipe part has half, pass --peak-tflops there):
    fp32: AVX-512 2 x 16 lanes x 2 = 64; AVX2+FMA 2 x 8 x 2 = 32; otherwise SSE 2 x 4 x 2 = 16.
    bf16: AMX-BF16 1024 (one tile multiply per cycle); AVX512-BF16 128 (vdpbf16ps, twice the fp32 rate); otherwise the
          fp32 rate (bf16 GEMMs then compute in fp32).
Clock: the CPU's maximum frequency from cpufreq when the kernel exposes it, else the "cpu MHz" of /proc/cpuinfo (what
a VM reports: its nominal clock). Cores: the threads the run uses, at most the cores available to this process.
A measured GEMM rate is not a peak: ratios against it are reported apart, under their own name ("of GEMM").
"""
from __future__ import annotations

import os

import torch


def _cpuinfo() -> tuple[set[str], float, str]:
    """(feature flags, MHz, model name) of cpu0."""
    flags, mhz, model = set(), 0.0, "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "flags" and not flags:
                    flags = set(value.split())
                elif key == "cpu MHz" and not mhz:
                    mhz = float(value)
                elif key == "model name" and model == "unknown CPU":
                    model = value.strip()
    except OSError:
        pass
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            mhz = int(f.read()) / 1000.0
    except (OSError, ValueError):
        pass
    return flags, mhz, model


def flops_per_cycle(flags: set[str], dtype: torch.dtype) -> tuple[int, str]:
    """(FLOPs per cycle per core, the unit it assumes) for `dtype` on a CPU with these /proc/cpuinfo flags."""
    if dtype == torch.bfloat16:
        if "amx_bf16" in flags:
            return 1024, "AMX-BF16"
        if "avx512_bf16" in flags:
            return 128, "AVX512-BF16"
    if {"avx512f", "fma"} <= flags:
        return 64, "AVX-512 FMA x2"
    if {"avx2", "fma"} <= flags:
        return 32, "AVX2 FMA x2"
    return 16, "SSE x2"


def cpu_peak_tflops(dtype: torch.dtype, threads: int) -> tuple[float, str]:
    """(peak TFLOP/s of the cores `threads` threads run on, how it was computed)."""
    flags, mhz, model = _cpuinfo()
    cores = max(1, min(threads, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()))
    per_cycle, unit = flops_per_cycle(flags, dtype)
    peak = cores * mhz * 1e6 * per_cycle / 1e12
    return peak, (f"hardware peak {cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} {str(dtype).replace('torch.', '')} "
                  f"FLOP/cycle ({unit}; {model})")
