"""Hardware specs the planner models: A100 / H100 nodes (datasheet numbers) and this machine's CPU (measured).

Every number is a named field with its source. Achievable fractions (how much of a datasheet peak real kernels reach)
are documented constants, the same for every model size and layout: the planner is never fitted per configuration.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

from .gemm_shape import shape_efficiency

GiB = 1024 ** 3
GB = 1e9

# --- achievable fractions (one value for all GPUs; see docs/planner.md) ------------------------------------------------
NCCL_NVLINK_BUS_EFFICIENCY = 0.80
"""nccl-tests all-reduce bus bandwidth on a DGX A100 / H100 reaches ~80% of the unidirectional NVLink rate."""
NCCL_IB_BUS_EFFICIENCY = 0.90
"""nccl-tests inter-node bus bandwidth with one HCA per GPU reaches ~90% of the InfiniBand line rate."""
HBM_EFFICIENCY = 0.80
"""Fused elementwise kernels (LayerNorm, softmax, bias-GELU, dropout-add) stream at ~80% of the HBM datasheet rate."""


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator and its links, as the planner sees it."""

    name: str
    peak_tflops_bf16: float
    """dense bf16/fp16 tensor-core peak (TFLOP/s); for the CPU spec: the measured fp32 GEMM rate"""
    memory_bytes: int
    """device memory capacity"""
    hbm_GBps: float
    """device memory bandwidth (GB/s), bounds elementwise kernels and the optimizer step"""
    nvlink_GBps: float
    """NVLink bandwidth per GPU, both directions summed (datasheet convention): 600 GB/s A100, 900 GB/s H100"""
    ib_Gbps: float
    """InfiniBand line rate per GPU (one HCA per GPU), one direction: HDR 200 Gb/s, NDR 400 Gb/s"""
    nvlink_latency_s: float
    """per-step latency of an NCCL ring step inside a node"""
    ib_latency_s: float
    """per-step latency of an NCCL ring step / point-to-point message between nodes"""
    num_sms: int
    """streaming multiprocessors (GEMM tiles run in waves of num_sms); for the CPU: cores"""
    gemm_efficiency_max: float
    """fraction of peak a large, well-shaped GEMM sustains (cuBLAS); the curve in efficiency.py scales it down"""
    kernel_launch_s: float
    """fixed cost of one kernel launch (added per GEMM / elementwise kernel)"""
    gemm_tile_m: int = 256
    """output-tile rows of the GEMM kernel (cuBLAS's large fp16/bf16 tile on Ampere/Hopper: 256 x 128)"""
    gemm_tile_n: int = 128
    """output-tile columns of the GEMM kernel"""
    gemm_k_overhead: int = 64
    """per-tile prologue/epilogue (loading, storing the output) costs as much as this many steps along k"""

    @property
    def nvlink_bus_Bps(self) -> float:
        """Achievable bus bandwidth of a ring collective inside a node, one direction (bytes/s)."""
        return self.nvlink_GBps / 2 * GB * NCCL_NVLINK_BUS_EFFICIENCY

    @property
    def ib_bus_Bps(self) -> float:
        """Achievable bus bandwidth between nodes per GPU, one direction (bytes/s)."""
        return self.ib_Gbps / 8 * GB * NCCL_IB_BUS_EFFICIENCY

    @property
    def hbm_Bps(self) -> float:
        return self.hbm_GBps * GB * HBM_EFFICIENCY

    @property
    def peak_flops(self) -> float:
        return self.peak_tflops_bf16 * 1e12


A100_BF16_TFLOPS = 312.0
"""A100 SXM dense bf16/fp16 tensor-core peak (NVIDIA A100 datasheet)."""
H100_BF16_TFLOPS = 989.0
"""H100 SXM dense bf16 tensor-core peak (NVIDIA H100 datasheet, without sparsity)."""
A100_SMS = 108
H100_SMS = 132
A100_NVLINK_GBPS = 600.0
"""NVLink 3 (12 links x 50 GB/s, both directions)."""
H100_NVLINK_GBPS = 900.0
"""NVLink 4 (18 links x 50 GB/s, both directions)."""
HDR_IB_GBPS = 200.0
"""HDR InfiniBand, one 200 Gb/s HCA per GPU (DGX A100 / Selene)."""
NDR_IB_GBPS = 400.0
"""NDR InfiniBand, one 400 Gb/s HCA per GPU (DGX H100)."""
A100_80GB_HBM_GBPS = 2039.0
A100_40GB_HBM_GBPS = 1555.0
H100_HBM_GBPS = 3350.0
NVLINK_LATENCY_S = 5e-6
"""NCCL intra-node ring step latency (nccl-tests small-message all-reduce ~10-20 us over a few steps)."""
IB_LATENCY_S = 10e-6
"""NCCL inter-node step latency over InfiniBand (RDMA ~2-5 us plus NCCL protocol overhead)."""
A100_GEMM_EFFICIENCY_MAX = 0.859
"""Maximum achievable bf16 matmul rate of an A100 SXM: 267.9 of 312 TFLOP/s (85.9%; S. Bekman, ml-engineering,
"Maximum Achievable Matmul FLOPS comparison table", mamf-finder.py, CUDA 12.1)."""
H100_GEMM_EFFICIENCY_MAX = 0.801
"""Maximum achievable bf16 matmul rate of an H100 SXM: 792.1 of 989 TFLOP/s (80.1%; same source)."""
GPU_KERNEL_LAUNCH_S = 4e-6
"""CUDA kernel launch + scheduling gap between dependent kernels."""

GPUS: dict[str, GPUSpec] = {
    "a100-80gb": GPUSpec("a100-80gb", A100_BF16_TFLOPS, 80 * GiB, A100_80GB_HBM_GBPS, A100_NVLINK_GBPS, HDR_IB_GBPS,
                         NVLINK_LATENCY_S, IB_LATENCY_S, A100_SMS, A100_GEMM_EFFICIENCY_MAX, GPU_KERNEL_LAUNCH_S),
    "a100-40gb": GPUSpec("a100-40gb", A100_BF16_TFLOPS, 40 * GiB, A100_40GB_HBM_GBPS, A100_NVLINK_GBPS, HDR_IB_GBPS,
                         NVLINK_LATENCY_S, IB_LATENCY_S, A100_SMS, A100_GEMM_EFFICIENCY_MAX, GPU_KERNEL_LAUNCH_S),
    "h100-80gb": GPUSpec("h100-80gb", H100_BF16_TFLOPS, 80 * GiB, H100_HBM_GBPS, H100_NVLINK_GBPS, NDR_IB_GBPS,
                         NVLINK_LATENCY_S, IB_LATENCY_S, H100_SMS, H100_GEMM_EFFICIENCY_MAX, GPU_KERNEL_LAUNCH_S),
}


def get_gpu(name: str) -> GPUSpec:
    """The spec of GPU `name`; a ValueError listing the known names otherwise."""
    if name not in GPUS:
        raise ValueError(f"unknown GPU {name!r}; known GPUs: {', '.join(GPUS)} (or measure_cpu_spec() for this CPU)")
    return GPUS[name]


# --- this machine ----------------------------------------------------------------------------------------------------
CPU_GEMM_SIZE = 512
"""Square fp32 GEMM used to measure the CPU's GEMM rate (large enough to be compute-bound, fast to run)."""
CPU_COPY_BYTES = 64 * 1024 * 1024
"""Buffer copied to measure memory bandwidth (well above the last-level cache)."""
CPU_MEASURE_REPEATS = 5
"""Timed repetitions; the best one is kept (the least disturbed by other processes)."""
GLOO_LOOPBACK_FRACTION = 0.25
"""Estimate used when the link is not measured (measure_link=False): gloo moves tensors between local processes
through TCP loopback at ~1/4 of a memcpy (read, kernel copy, write). An upper bound: measured, gloo's ring reaches
1/10-1/30 of the copy rate on a 2-core laptop (the reduction and the socket copies share the cores)."""
GLOO_LATENCY_S = 50e-6
"""Per-message latency of gloo over localhost TCP (estimate; measure_link=True measures it)."""
GLOO_PROBE_BYTES = 4 * 1024 * 1024
"""Large all-reduce of the link probe (bandwidth): latency is a few percent of its ~3-5 ms."""
GLOO_PROBE_SMALL_BYTES = 128 * 1024
"""Small all-reduce of the link probe (latency): the size of a tensor-parallel activation of the CPU test configs."""
GLOO_PROBE_REPEATS = 50
"""Timed all-reduces per size (their mean is kept)."""
GLOO_PROBE_GAP_SIZE = 256
"""Square GEMM (~0.3 ms, about one part of a layer of the CPU test configs) run before each probe all-reduce: as
between two tensor-parallel collectives, both ranks compute and their gloo threads sleep."""
BUSY_NODE_SECONDS = 0.25
"""Window over which every rank of the busy-node probe runs GEMMs at once (long enough to average the host's
scheduling, short enough to keep the probe cheap)."""
CPU_OP_OVERHEAD_S = 10e-6
"""Fixed PyTorch eager dispatch cost of one CPU operator."""
CPU_GEMM_TILE = 16
"""Register/cache block of the CPU BLAS micro-kernel (oneDNN/MKL block a few x 16 floats)."""
CPU_GEMM_K_OVERHEAD = 32
"""Packing cost of a CPU GEMM block, in k-steps."""


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up: allocations, thread pool start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _gloo_rank(rank: int, port: int, sizes: tuple[int, ...]) -> dict[int, float]:
    """One rank of the link probe: mean seconds of a 2-rank all-reduce of each size, each after a short GEMM burst."""
    import datetime

    import torch
    import torch.distributed as dist

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread per rank, as the CPU runs use
    try:
        timeout = datetime.timedelta(seconds=60)
        store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=timeout)
        group = dist.ProcessGroupGloo(store, rank, 2, timeout)
        work = torch.randn(GLOO_PROBE_GAP_SIZE, GLOO_PROBE_GAP_SIZE)
        means = {}
        for num_bytes in sizes:
            buffer = torch.ones(max(1, num_bytes // 4))
            group.allreduce([buffer]).wait()  # warm-up: connections, buffers
            total = 0.0
            for _ in range(GLOO_PROBE_REPEATS):
                torch.mm(work, work)  # the peer's gloo threads fall asleep, as during a layer's computation
                start = time.perf_counter()
                group.allreduce([buffer]).wait()
                total += time.perf_counter() - start
            means[num_bytes] = total / GLOO_PROBE_REPEATS
        return means
    finally:
        torch.set_num_threads(previous)


def _gloo_peer(port: int, sizes: tuple[int, ...]) -> None:
    try:
        _gloo_rank(1, port, sizes)
    finally:
        os._exit(0)  # skip the parent's atexit handlers (a forked copy of the caller)


def measure_gloo_link() -> tuple[float, float]:
    """(bus bandwidth in bytes/s, per-step latency in s) of a 2-rank gloo all-reduce over localhost TCP, measured the
    way gpt3d's local ranks communicate: two processes (this one and a forked peer, so no interpreter starts; ~0.3 s),
    each with one thread, each all-reduce issued right after a short computation. Means, not minima: a step pays
    every collective, and the slow ones (waking the peer's gloo threads, a TCP window update) are part of the cost.
    A 2-rank ring all-reduce is 2 steps moving the whole buffer once, t = 2 latency + bytes / bandwidth, fitted
    through the two probe sizes."""
    import multiprocessing
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sizes = (GLOO_PROBE_SMALL_BYTES, GLOO_PROBE_BYTES)
    peer = multiprocessing.get_context("fork").Process(target=_gloo_peer, args=(port, sizes), daemon=True)
    peer.start()
    try:
        means = _gloo_rank(0, port, sizes)
    finally:
        peer.join(timeout=60)
        if peer.is_alive():
            peer.kill()
    small, large = means[GLOO_PROBE_SMALL_BYTES], means[GLOO_PROBE_BYTES]
    bandwidth = (GLOO_PROBE_BYTES - GLOO_PROBE_SMALL_BYTES) / max(large - small, 1e-9)
    latency = max(small - GLOO_PROBE_SMALL_BYTES / bandwidth, 0.0) / 2
    return bandwidth, latency


def _sustained_gemm_tflops(seconds: float) -> float:
    """fp32 TFLOP/s of back-to-back CPU_GEMM_SIZE^3 GEMMs over `seconds` (mean rate, not the best repetition)."""
    import torch

    n = CPU_GEMM_SIZE
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    return 2.0 * n ** 3 * count / (time.perf_counter() - start) / 1e12


def _busy_rank(barrier, results) -> None:
    try:
        import torch
        torch.set_num_threads(1)
        barrier.wait()
        results.send(_sustained_gemm_tflops(BUSY_NODE_SECONDS))
    finally:
        os._exit(0)  # skip the parent's atexit handlers (a forked copy of the caller)


def measure_busy_node_slowdown(ranks: int = 2) -> float:
    """Sustained fp32 GEMM rate of the slowest of `ranks` one-thread processes computing at once (this one and forked
    peers), over the rate of this process computing alone (~0.5 s). A CPU "GPU" runs slower while its neighbours work
    (shared L3 and memory bandwidth, the host's scheduling of the virtual cores) and the slowest rank paces a
    synchronous step, so a layout that fills the node runs at peak x this factor (0.9-1.0 on the 2-vCPU laptop VM)."""
    import multiprocessing

    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = _sustained_gemm_tflops(BUSY_NODE_SECONDS)
        context = multiprocessing.get_context("fork")
        barrier = context.Barrier(ranks)
        pipes = [context.Pipe(duplex=False) for _ in range(ranks - 1)]
        peers = [context.Process(target=_busy_rank, args=(barrier, send), daemon=True) for _, send in pipes]
        for peer in peers:
            peer.start()
        try:
            barrier.wait(timeout=60)
            busy = [_sustained_gemm_tflops(BUSY_NODE_SECONDS)] + [receive.recv() for receive, _ in pipes]
        finally:
            for peer in peers:
                peer.join(timeout=60)
    finally:
        torch.set_num_threads(previous)
    return min(1.0, min(busy) / alone)


def measure_cpu_spec(threads: int | None = None, measure_link: bool = False) -> GPUSpec:
    """A GPUSpec for this CPU from a measured fp32 GEMM rate and copy bandwidth (takes ~0.1-0.5 s).

    The "GPU" is one process using `threads` cores (default: torch's current setting); intra-node collectives are gloo
    over loopback, and there is no second node (ib = the same loopback). The loopback link is estimated from the copy
    bandwidth (GLOO_LOOPBACK_FRACTION, GLOO_LATENCY_S), or with `measure_link` measured by a 2-rank gloo all-reduce
    (measure_gloo_link, ~0.3 s more)."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        n = CPU_GEMM_SIZE
        a, b = torch.randn(n, n), torch.randn(n, n)
        gemm_s = _best_time(lambda: torch.mm(a, b), CPU_MEASURE_REPEATS)
        src = torch.empty(CPU_COPY_BYTES // 4)
        dst = torch.empty_like(src)
        src.fill_(1.0)
        copy_s = _best_time(lambda: dst.copy_(src), CPU_MEASURE_REPEATS)
        cores = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    gemm_tflops = 2.0 * n ** 3 / gemm_s / 1e12
    copy_GBps = 2.0 * CPU_COPY_BYTES / copy_s / GB  # read + write
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    link_GBps, link_latency_s = copy_GBps * GLOO_LOOPBACK_FRACTION, GLOO_LATENCY_S
    if measure_link:
        link_Bps, link_latency_s = measure_gloo_link()
        link_GBps = link_Bps / GB
    return GPUSpec(
        name="cpu",
        peak_tflops_bf16=gemm_tflops,
        memory_bytes=int(ram),
        hbm_GBps=copy_GBps / HBM_EFFICIENCY,  # measured = achievable; hbm_Bps applies HBM_EFFICIENCY back
        nvlink_GBps=2 * link_GBps / NCCL_NVLINK_BUS_EFFICIENCY,
        ib_Gbps=8 * link_GBps / NCCL_IB_BUS_EFFICIENCY,
        nvlink_latency_s=link_latency_s,
        ib_latency_s=link_latency_s,
        num_sms=cores,
        gemm_efficiency_max=1.0 / _cpu_shape_factor(n),  # the curve reproduces the measured rate at n^3
        kernel_launch_s=CPU_OP_OVERHEAD_S,
        gemm_tile_m=CPU_GEMM_TILE,
        gemm_tile_n=CPU_GEMM_TILE,
        gemm_k_overhead=CPU_GEMM_K_OVERHEAD,
    )


def _cpu_shape_factor(n: int) -> float:
    """The efficiency curve's shape factor at the measured square GEMM (one core count's worth of tiles)."""
    return shape_efficiency(n, n, n, 1, num_sms=1, tile_m=CPU_GEMM_TILE, tile_n=CPU_GEMM_TILE,
                            k_overhead=CPU_GEMM_K_OVERHEAD)


def with_overrides(spec: GPUSpec, **changes) -> GPUSpec:
    """A copy of `spec` with some fields changed (e.g. a cluster with a different interconnect)."""
    return replace(spec, **changes)
