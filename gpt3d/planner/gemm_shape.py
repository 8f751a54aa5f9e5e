"""The shape factor of a GEMM's efficiency (wave x fill x depth; see efficiency.py), a pure function of the shape and
the tile grid: hardware.py calibrates the CPU's curve with it and efficiency.py applies it per GPU."""
from __future__ import annotations

import math


def shape_efficiency(m: int, n: int, k: int, batch: int, num_sms: int, tile_m: int, tile_n: int,
                     k_overhead: int) -> float:
    """wave x fill x depth for a (batched) GEMM [m, k] @ [k, n] (see the module docstring)."""
    if min(m, n, k, batch) < 1:
        raise ValueError(f"GEMM dimensions must be >= 1, got m={m} n={n} k={k} batch={batch}")
    tiles_m, tiles_n = math.ceil(m / tile_m), math.ceil(n / tile_n)
    tiles = batch * tiles_m * tiles_n
    wave = tiles / (math.ceil(tiles / num_sms) * num_sms)
    fill = (m * n) / (tiles_m * tile_m * tiles_n * tile_n)
    depth = k / (k + k_overhead)
    return wave * fill * depth
