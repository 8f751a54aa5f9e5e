"""Published Megatron-LM throughput the planner is validated against.

Source: Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM",
Table 1 (weak scaling on Selene: DGX A100 80 GB nodes, 8 GPUs each, NVLink/NVSwitch, 8 x 200 Gb/s HDR HCAs per
node). All models: vocabulary 51,200, sequence 2048, fp16, full activation recomputation, interleaved schedule with
the scatter/gather optimisation. Micro-batch sizes, virtual stages and the DDP implementation are the paper's
artifact scripts (NVIDIA/Megatron-LM examples/sc21/run_table_1.sh): DDP=torch overlaps the gradient all-reduce with
the backward, DDP=local (2021) all-reduces after the backward; gradients are reduced in fp16 (no
--accumulate-allreduce-grads-in-fp32). Dropout: Megatron's defaults (0.1 hidden and attention).

Achieved TFLOP/s per GPU is eq. (3), 96 B s l h^2 (1 + s/(6h) + V/(16 l h)), over the measured step time: the FLOPs
executed with full recomputation -- the planner's `hardware_tflops_per_gpu` with recompute="full".
"""
from __future__ import annotations

from dataclasses import dataclass

from gpt3d.config.model import ModelConfig

from .layout import Layout
from .performance import PerformanceOptions

PUBLISHED_VOCAB = 51200
PUBLISHED_SEQ_LEN = 2048
PUBLISHED_DROPOUT = 0.1
"""Megatron-LM's default --hidden-dropout and --attention-dropout (the scripts do not override them)."""
PUBLISHED_GRAD_REDUCE_BYTES = 2
"""fp16 gradients all-reduced in fp16."""
PUBLISHED_GPU = "a100-80gb"


@dataclass(frozen=True)
class PublishedRun:
    params_billion: float
    n_heads: int
    d_model: int
    n_layers: int
    tp: int
    pp: int
    num_gpus: int
    global_batch: int
    micro_batch: int
    vp: int
    overlapped_ddp: bool
    tflops_per_gpu: float

    def model(self) -> ModelConfig:
        return ModelConfig(n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
                           seq_len=PUBLISHED_SEQ_LEN, vocab_size=PUBLISHED_VOCAB, vocab_pad_multiple=128,
                           hidden_dropout=PUBLISHED_DROPOUT, attn_dropout=PUBLISHED_DROPOUT, activation="gelu",
                           dense_attention="softmax")  # 2021: explicit scores + fused softmax

    def layout(self) -> Layout:
        return Layout(tp=self.tp, pp=self.pp, dp=self.num_gpus // (self.tp * self.pp), vp=self.vp,
                      micro_batch=self.micro_batch, sequence_parallel=False, recompute="full",
                      distributed_optimizer=False)

    def options(self) -> PerformanceOptions:
        return PerformanceOptions(gpus_per_node=8, overlap_grad_reduce=self.overlapped_ddp,
                                  grad_reduce_bytes=PUBLISHED_GRAD_REDUCE_BYTES, dtype="fp16")


# Table 1 rows; vp = layers / (pp * --num-layers-per-virtual-pipeline-stage) from run_table_1.sh.
TABLE_1: tuple[PublishedRun, ...] = (
    PublishedRun(1.7, 24, 2304, 24, 1, 1, 32, 512, 16, 1, True, 137.0),
    PublishedRun(3.6, 32, 3072, 30, 2, 1, 64, 512, 16, 1, True, 138.0),
    PublishedRun(7.5, 32, 4096, 36, 4, 1, 128, 512, 16, 1, True, 142.0),
    PublishedRun(18.4, 48, 6144, 40, 8, 1, 256, 1024, 8, 1, True, 135.0),
    PublishedRun(39.1, 64, 8192, 48, 8, 2, 512, 1536, 4, 1, False, 138.0),
    PublishedRun(76.1, 80, 10240, 60, 8, 4, 1024, 1792, 2, 3, False, 140.0),
    PublishedRun(145.6, 96, 12288, 80, 8, 8, 1536, 2304, 2, 2, False, 148.0),
    PublishedRun(310.1, 128, 16384, 96, 8, 16, 1920, 2160, 1, 2, False, 155.0),
    PublishedRun(529.6, 128, 20480, 105, 8, 35, 2520, 2520, 1, 3, False, 163.0),
    PublishedRun(1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 1, 1, False, 163.0),
)
