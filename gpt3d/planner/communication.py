"""Collective and point-to-point times (ring algorithms, as NCCL runs them at these sizes) and which link they use.

Ring all-reduce over n ranks moves 2 (n - 1) / n of the buffer through each rank's link in 2 (n - 1) steps;
all-gather and reduce-scatter move (n - 1) / n in n - 1 steps. Time = steps x latency + volume / bus bandwidth.
Rank order is tp fastest, then dp, then pp (gpt3d's ParallelContext), and nodes hold consecutive ranks, so:
- a TP group stays inside a node when tp <= gpus_per_node (NVLink), otherwise it crosses InfiniBand;
- a DP group (stride tp) stays inside a node when tp * dp <= gpus_per_node;
- pipeline neighbours (stride tp * dp) are on different nodes when tp * dp >= gpus_per_node.
A collective that crosses nodes runs at the InfiniBand rate per GPU (every GPU has its own HCA).
"""
from __future__ import annotations

from .hardware import GPUSpec


def link(gpu: GPUSpec, intra_node: bool) -> tuple[float, float]:
    """(bus bandwidth bytes/s, per-step latency s) of NVLink inside a node or InfiniBand between nodes."""
    if intra_node:
        return gpu.nvlink_bus_Bps, gpu.nvlink_latency_s
    return gpu.ib_bus_Bps, gpu.ib_latency_s


def all_reduce_time(num_bytes: float, ranks: int, gpu: GPUSpec, intra_node: bool) -> float:
    if ranks == 1:
        return 0.0
    bandwidth, latency = link(gpu, intra_node)
    return 2 * (ranks - 1) * latency + 2 * (ranks - 1) / ranks * num_bytes / bandwidth


def all_gather_time(num_bytes: float, ranks: int, gpu: GPUSpec, intra_node: bool) -> float:
    """`num_bytes` = the gathered (full) buffer."""
    if ranks == 1:
        return 0.0
    bandwidth, latency = link(gpu, intra_node)
    return (ranks - 1) * latency + (ranks - 1) / ranks * num_bytes / bandwidth


def reduce_scatter_time(num_bytes: float, ranks: int, gpu: GPUSpec, intra_node: bool) -> float:
    """`num_bytes` = the full (input) buffer."""
    return all_gather_time(num_bytes, ranks, gpu, intra_node)


def p2p_time(num_bytes: float, gpu: GPUSpec, intra_node: bool) -> float:
    bandwidth, latency = link(gpu, intra_node)
    return latency + num_bytes / bandwidth


def tp_intra_node(tp: int, gpus_per_node: int) -> bool:
    return tp <= gpus_per_node


def dp_intra_node(tp: int, dp: int, gpus_per_node: int) -> bool:
    return tp * dp <= gpus_per_node


def pp_intra_node(tp: int, dp: int, pp: int, gpus_per_node: int) -> bool:
    return tp * dp * pp <= gpus_per_node
