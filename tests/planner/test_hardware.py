"""GPU specs, the measured CPU spec, the GEMM efficiency curve and sparse-layout densities."""
import pytest

from gpt3d.config.sparse import SparseAttentionConfig
from gpt3d.planner.efficiency import gemm_efficiency, gemm_time
from gpt3d.planner.hardware import GPUS, get_gpu, measure_cpu_spec
from gpt3d.planner.sparsity import layout_density


def test_datasheet_numbers():
    a100, h100 = GPUS["a100-80gb"], GPUS["h100-80gb"]
    assert (a100.peak_tflops_bf16, a100.nvlink_GBps, a100.ib_Gbps) == (312.0, 600.0, 200.0)
    assert (h100.peak_tflops_bf16, h100.nvlink_GBps, h100.ib_Gbps) == (989.0, 900.0, 400.0)
    assert GPUS["a100-40gb"].memory_bytes == 40 * 1024 ** 3 and a100.memory_bytes == 80 * 1024 ** 3
    with pytest.raises(ValueError, match="unknown GPU 'b200'; known GPUs: a100-80gb, a100-40gb, h100-80gb"):
        get_gpu("b200")


def test_measured_cpu_spec():
    """Checked against what the kernel reports (/proc/meminfo) and the thread count torch uses; the GEMM rate itself is
    a timing and is not asserted (the curve is normalised to it by construction, so comparing the two proves
    nothing)."""
    cpu = measure_cpu_spec()
    assert cpu.name == "cpu" and cpu.peak_tflops_bf16 > 0 and cpu.hbm_GBps > 0
    with open("/proc/meminfo") as f:
        mem_total_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    assert abs(cpu.memory_bytes - mem_total_kib * 1024) <= 4096  # the same RAM, from sysconf's page count
    import torch
    assert cpu.num_sms == torch.get_num_threads()  # one "SM" per thread of the process
    # A GEMM too small to fill the cores is predicted to run less efficiently than the measured 512^3 one.
    assert gemm_efficiency(16, 16, 16, cpu) < gemm_efficiency(512, 512, 512, cpu) <= cpu.gemm_efficiency_max


def test_small_gemms_under_tp_run_slower():
    a100 = GPUS["a100-80gb"]
    tokens, d = 8192, 4096
    whole = gemm_efficiency(tokens, d, 4 * d, a100)          # fc2 without TP
    sharded = gemm_efficiency(tokens, d, 4 * d // 8, a100)   # fc2 row-parallel over tp8: k = 4d/8
    thin = gemm_efficiency(tokens, d, 64, a100)
    assert a100.gemm_efficiency_max >= whole > sharded > thin
    assert gemm_efficiency(100, 100, 4096, a100) < gemm_efficiency(4096, 4096, 4096, a100)  # partial wave
    # q k^T over d_head=128: thin (depth 128 / (128 + 64)) and bounded below by streaming its operands (roofline)
    s, batch = 2048, 12
    assert gemm_efficiency(s, s, 128, a100, batch) <= a100.gemm_efficiency_max * 128 / (128 + a100.gemm_k_overhead)
    assert gemm_time(s, s, 128, a100, batch) >= batch * (2 * s * 128 + s * s) * 2 / a100.hbm_Bps


def test_layout_densities():
    nb = 2048 // 64
    dense = SparseAttentionConfig(layout="dense", block=64)
    assert layout_density(dense, 2048) == pytest.approx((nb + 1) / (2 * nb))
    local = SparseAttentionConfig(layout="local", block=64, num_local_blocks=4)
    assert layout_density(local, 2048) == pytest.approx((4 * nb - 6) / nb ** 2)  # band of 4, shorter at the start
    gpt3 = SparseAttentionConfig(layout="fixed", block=64, num_local_blocks=4, num_global_blocks=1)
    assert layout_density(gpt3, 2048) == pytest.approx(0.1875)
    with pytest.raises(ValueError, match="not a multiple of the sparse block size 64"):
        layout_density(gpt3, 2000)
