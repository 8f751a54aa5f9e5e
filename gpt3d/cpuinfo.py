"""What Linux's /proc/cpuinfo says about cpu0, read once per process (empty fields where it cannot be read)."""
from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuInfo:
    flags: frozenset[str]  # feature flags: avx2, avx512f, avx512_bf16, amx_bf16, ...
    mhz: float  # "cpu MHz": the current clock (a VM reports its nominal one); 0.0 when absent
    model: str  # "model name"
    vendor: str  # "vendor_id": GenuineIntel, AuthenticAMD, ...; "" when absent
    family: int  # "cpu family" (AMD: 0x19 Zen 3/4, 0x1a Zen 5); 0 when absent


def mkl_takes_its_non_intel_path(vendor: str) -> bool:
    """MKL (torch's fp32 GEMM on x86) runs its fast AVX-512 code only on CPUs whose vendor id says Intel; elsewhere it
    stops at AVX2. An unknown vendor ("") is taken as Intel: the route that is right everywhere but on AMD."""
    return vendor not in ("", "GenuineIntel")


@functools.lru_cache(maxsize=None)
def cpu_info(path: str = "/proc/cpuinfo") -> CpuInfo:
    fields: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():  # the blank line that ends cpu0's block
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    try:
        family = int(fields.get("cpu family", "0"))
    except ValueError:
        family = 0
    try:
        mhz = float(fields.get("cpu MHz", "0"))
    except ValueError:
        mhz = 0.0
    return CpuInfo(frozenset(fields.get("flags", "").split()), mhz, fields.get("model name", "unknown CPU"),
                   fields.get("vendor_id", ""), family)
