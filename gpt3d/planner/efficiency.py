"""Achievable GEMM and elementwise-kernel speed as a function of shape: why small GEMMs under TP run slower.

GEMM efficiency = gpu.gemm_efficiency_max x wave x fill x depth, each factor in (0, 1]:
- wave:  the output is cut into tiles of gemm_tile_m x gemm_tile_n that run in waves of num_sms; the last wave is
         partly idle: tiles / (ceil(tiles / num_sms) * num_sms). A TP-sharded GEMM has t times fewer tiles, so a
         larger share of its time is a partial wave.
- fill:  edge tiles are partly empty when m or n is not a multiple of the tile: m n / (M_padded N_padded).
- depth: each tile pays a fixed prologue/epilogue worth gemm_k_overhead steps along k: k / (k + gemm_k_overhead).
         Thin GEMMs (small k: the row-parallel projections under TP, q k^T over d_head) lose most here.
The time is the larger of the compute time at that efficiency and the time to stream the operands through memory
(a roofline), plus one kernel launch.

Curve for an A100 (tile 256 x 128, 108 SMs, k overhead 64), m = 8192 tokens:
  d=12288, t=8 fc1 (n=6144, k=12288): 0.85 x 0.99 x 1 x 0.995 = 0.84
  d=2304,  t=8 out-proj (n=2304, k=288): 0.85 x 0.99 x 1 x 0.82 = 0.69
  q k^T with d_head=128 (k=128): depth 0.67 -> also memory-bound on the s x s scores
"""
from __future__ import annotations

from .gemm_shape import shape_efficiency
from .hardware import GPUSpec


def gemm_efficiency(m: int, n: int, k: int, gpu: GPUSpec, batch: int = 1) -> float:
    """Fraction of the GPU's peak a GEMM of this shape sustains."""
    return gpu.gemm_efficiency_max * shape_efficiency(m, n, k, batch, gpu.num_sms, gpu.gemm_tile_m, gpu.gemm_tile_n,
                                                      gpu.gemm_k_overhead)


def gemm_time(m: int, n: int, k: int, gpu: GPUSpec, batch: int = 1, bytes_per_element: int = 2) -> float:
    """Seconds for `batch` GEMMs [m, k] @ [k, n]: roofline of compute (at the shape's efficiency) and memory."""
    flops = 2.0 * batch * m * n * k
    compute = flops / (gpu.peak_flops * gemm_efficiency(m, n, k, gpu, batch))
    memory = batch * (m * k + k * n + m * n) * bytes_per_element / gpu.hbm_Bps
    return max(compute, memory) + gpu.kernel_launch_s


def memory_bound_time(num_bytes: float, gpu: GPUSpec, kernels: int = 1) -> float:
    """Seconds for elementwise kernels that stream `num_bytes` through device memory."""
    return num_bytes / gpu.hbm_Bps + kernels * gpu.kernel_launch_s
