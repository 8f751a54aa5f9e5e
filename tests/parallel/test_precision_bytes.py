"""Bytes per parameter, measured on the real tensors of a live Trainer: the storages of the weights, the fp32 main
gradients, the fp32 master weights and the Adam moments, each storage counted once.

Megatron-LM's numbers: bf16 2 (weights) + 4 (main grads) + 12 (master + moments) = 18 per parameter, or 6 + 12/dp with
the distributed optimizer; fp32 (the parameters are the masters): 4 + 4 + 8 = 16, or 8 + 8/dp. Buckets are padded to a
multiple of dp under the distributed optimizer, so the count is per padded bucket element (a few elements at most).
"""
import pytest
import torch

from .harness import layout_overrides, make_config, register, results

CASES = {  # name -> (world, overrides, expected bytes per (padded) parameter)
    "bf16": (1, ["train.dtype=bf16"], 18),
    "bf16 dist-opt dp2": (2, ["train.dtype=bf16", "parallel.distributed_optimizer=true"] + layout_overrides(1, 1, 2),
                          6 + 12 / 2),
    "fp32": (1, [], 16),
    "fp32 dist-opt dp2": (2, ["parallel.distributed_optimizer=true"] + layout_overrides(1, 1, 2), 8 + 8 / 2),
}


def measure_bytes(rank: int, world_size: int, overrides: list[str]) -> dict:
    from gpt3d.train.runtime import init_runtime
    from gpt3d.train.trainer import Trainer
    cfg = make_config(overrides)
    trainer = Trainer(cfg, init_runtime(cfg, rank, world_size, rank, world_size))
    storages: dict[int, int] = {}

    def count(t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()

    params = [p for chunk in trainer.chunks for p in chunk.parameters()]
    for p in params:
        count(p)
        if p.grad is not None:
            count(p.grad)
        count(p.main_grad)
    for s in trainer.optimizer.states:
        for t in (s.master, s.exp_avg, s.exp_avg_sq):
            count(t)
    buckets = trainer.sync.all_buckets()
    return {"bytes": sum(storages.values()), "params": sum(p.numel() for p in params),
            "padded": sum(b.padded for b in buckets), "buckets": len(buckets),
            "dtypes": sorted({str(p.dtype) for p in params}),
            "grad_dtypes": sorted({str(p.main_grad.dtype) for p in params}),
            "grads_freed": all(p.grad is None for p in params)}


for _name, (_world, _overrides, _) in CASES.items():
    register(_world, f"bytes {_name}", measure_bytes, _overrides)


@pytest.mark.parametrize("name", list(CASES))
def test_bytes_per_parameter_are_megatrons(name):
    world, overrides, per_param = CASES[name]
    for got in results(world, f"bytes {name}"):
        assert got["bytes"] == got["padded"] * per_param
        assert 0 <= got["padded"] - got["params"] < world * got["buckets"]  # padding: fewer than dp per bucket
        bf16 = "train.dtype=bf16" in overrides
        assert got["dtypes"] == ["torch.bfloat16" if bf16 else "torch.float32"]
        assert got["grad_dtypes"] == ["torch.float32"]
        assert got["grads_freed"] == bf16  # bf16: no parameter-sized bf16 gradient is kept between backwards
