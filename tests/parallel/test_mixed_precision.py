"""bf16 mixed precision (bf16 weights and activations, fp32 main grads, fp32 master weights + AdamW) in several layouts
against the single-process bf16 model, and the bytes each parameter costs.

The reference (`bf16_reference_job`) uses nothing of gpt3d.parallel: the whole model (build_gpt) cast to bf16, one
forward of the whole global batch, torch.optim.AdamW over fp32 copies of the weights (the masters), clip_grad_norm_ on
their fp32 gradients, and the masters rounded back into the bf16 model after each step.

Tolerances, from bf16 rounding. bf16 keeps 8 significant bits: unit roundoff u = 2^-8 = 3.9e-3, so every GEMM output,
activation and bf16 gradient is exact only to ~u relative. A layout changes which intermediate values get rounded and
where (TP all-reduces bf16 partial sums and splits GEMM reductions; PP/DP/micro-batching round each micro-batch's
gradient to bf16 separately and add them in fp32, where the reference rounds the whole batch's gradient once), so
layouts legitimately differ by a few u per value:
- losses (fp32 cross-entropy of bf16 logits, mean of 256 tokens): within u relative, one bf16 step of the loss itself,
  at every one of the 5 steps (observed: at most 2.7e-4 relative);
- gradients and grad norms: per tensor, ||g - g_ref|| <= 8u ||g_ref|| (3.1%). A gradient element is the end of a
  chain of bf16 roundings, ~16 per layer through forward and backward (LayerNorm, GEMMs, attention scores, softmax,
  GELU, residual adds) over 4 layers, k ~ 64; independent roundings add up to ~sqrt(k) u = 8u. Observed: at most
  0.95% (TP, which also all-reduces bf16 partial sums), 0.35% for PP/DP; the fp32 model's own gradients are 0.82% from
  the bf16 reference's (checked below, so the bound is the size of bf16 rounding). Any real mistake is far larger: a
  missing 1/m or 1/dp factor, a dropped micro-batch or a missing all-reduce changes a gradient by >= 25% of its norm.
fp32 runs stay exact as before (tests/parallel/test_model_parity.py, unchanged tolerances).
"""
import pytest
import torch

from .harness import job, layout_overrides, make_config, register, register_job, results, synthetic_batches

U = 2.0 ** -8  # bf16 unit roundoff
LOSS_RTOL = U
GRAD_REL = 8 * U
STEPS = 5
BF16 = "train.dtype=bf16"
SP = "parallel.sequence_parallel=true"
DIST_OPT = "parallel.distributed_optimizer=true"

# name -> (world size, overrides on top of harness.BASE)
LAYOUTS = {
    "bf16 tp2": (2, [BF16] + layout_overrides(2, 1, 1)),
    "bf16 pp2": (2, [BF16] + layout_overrides(1, 2, 1)),
    "bf16 dp2 dist-opt": (2, [BF16, DIST_OPT] + layout_overrides(1, 1, 2)),
    "bf16 tp2xpp2 sp": (4, [BF16, SP] + layout_overrides(2, 2, 1)),
    "bf16 single": (1, [BF16] + layout_overrides(1, 1, 1)),
}


def bf16_reference_job(rank: int, world_size: int, steps: int, dtype: str) -> dict:
    """The unsharded model in `dtype` ("bf16" or "fp32"), fp32 masters and torch.optim.AdamW: losses, grad norms and
    the fp32 gradients of step 1 (rank 0's record, as harness.job)."""
    from gpt3d.model.gpt import build_gpt
    from gpt3d.parallel.optimizer import lr_at
    cfg = make_config([f"train.dtype={dtype}"])
    torch.set_num_threads(1)
    model = build_gpt(cfg.model, cfg.train.seed).to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    params = list(model.parameters())
    masters = [p.detach().float().clone().requires_grad_() for p in params]
    o = cfg.optim
    optimizer = torch.optim.AdamW([{"params": [m for m in masters if m.dim() >= 2], "weight_decay": o.weight_decay},
                                   {"params": [m for m in masters if m.dim() < 2], "weight_decay": 0.0}],
                                  lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    names = [n for n, _ in model.named_parameters()]
    losses, norms, grads = [], [], None
    for i in range(steps):
        tokens = torch.from_numpy(synthetic_batches(1, cfg.train.global_batch_size, cfg.train.seq_len,
                                                    cfg.model.vocab_size, seed=i)[0])
        loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        for p, m in zip(params, masters):
            m.grad = p.grad.float()
            p.grad = None
        if i == 0:
            grads = {n: m.grad.clone() for n, m in zip(names, masters)}
        norms.append(torch.nn.utils.clip_grad_norm_(masters, o.grad_clip).item())
        losses.append(loss.item())
        for group in optimizer.param_groups:
            group["lr"] = lr_at(i, o, cfg.train.steps)
        optimizer.step()
        with torch.no_grad():
            for p, m in zip(params, masters):
                p.copy_(m)
    return {"rank": 0, "losses": losses, "norms": norms, "grads": grads}


# fp32 twins of two bf16 layouts, for the bytes they move (one step each)
FP32_TWINS = {"bf16 pp2": (2, layout_overrides(1, 2, 1)),
              "bf16 dp2 dist-opt": (2, [DIST_OPT] + layout_overrides(1, 1, 2))}
for _name, (_world, _overrides) in FP32_TWINS.items():
    register_job(_world, f"fp32 twin of {_name}", job(_overrides, 1, grads_after=None))

REFERENCES = {dtype: register(1, f"{dtype} mixed-precision reference", bf16_reference_job, STEPS, dtype)
              for dtype in ("bf16", "fp32")}
for _name, (_world, _overrides) in LAYOUTS.items():
    register_job(_world, _name, job(_overrides, STEPS))


def layout_result(name: str) -> dict:
    return results(LAYOUTS[name][0], name)[0]


def reference(dtype: str = "bf16") -> dict:
    return results(1, REFERENCES[dtype])[0]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_bf16_losses_follow_the_single_process_bf16_model(name):
    got, ref = layout_result(name), reference()
    assert len(got["losses"]) == STEPS
    assert got["losses"] == pytest.approx(ref["losses"], rel=LOSS_RTOL)
    assert got["norms"] == pytest.approx(ref["norms"], rel=GRAD_REL)
    assert ref["losses"][-1] < ref["losses"][0] - 0.1  # the optimizer really stepped the bf16 weights


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_bf16_gradients_equal_single_process_within_rounding(name):
    got, ref = layout_result(name)["grads"], reference()["grads"]
    assert sorted(got) == sorted(ref)
    for key in ref:
        assert got[key].dtype == torch.float32, f"{key}: main grads must be fp32"
        assert relative_error(got[key], ref[key]) <= GRAD_REL, (key, relative_error(got[key], ref[key]))


def test_the_tolerance_is_the_size_of_bf16_rounding():
    """The fp32 model's gradients lie within the bound of the bf16 reference's, and bf16 is not silently fp32."""
    bf16, fp32 = reference("bf16")["grads"], reference("fp32")["grads"]
    errors = {key: relative_error(bf16[key], fp32[key]) for key in fp32}
    assert max(errors.values()) <= GRAD_REL, errors
    assert max(errors.values()) > U / 16, errors  # the bf16 run really rounded


def test_pipeline_transfers_and_weight_gathers_move_bf16():
    """p2p activations/gradients and the distributed optimizer's weight all-gather carry bf16 (half the bytes of the
    fp32 run); the gradient reduce-scatter stays fp32 (main grads)."""
    def step_bytes(name: str, group: str) -> list[dict]:
        world = LAYOUTS[name][0] if name in LAYOUTS else FP32_TWINS[name.removeprefix("fp32 twin of ")][0]
        return [r["steps"][0]["bytes"][group] for r in results(world, name)]

    for bf16, fp32 in zip(step_bytes("bf16 pp2", "pp"), step_bytes("fp32 twin of bf16 pp2", "pp")):
        assert fp32["send"] > 0 and bf16["send"] * 2 == fp32["send"]
    for bf16, fp32 in zip(step_bytes("bf16 dp2 dist-opt", "dp"), step_bytes("fp32 twin of bf16 dp2 dist-opt", "dp")):
        assert fp32["all_gather"] > 0 and bf16["all_gather"] * 2 == fp32["all_gather"]
        assert bf16["reduce_scatter"] == fp32["reduce_scatter"] > 0
