"""fp16 keeps its dynamic loss scale under mixed precision: a scale that overflows the fp16 gradients skips the step
(fp32 masters, moments and fp16 weights untouched) and halves the scale, until a step applies; the fp16 weights are
then the updated masters rounded."""
import torch

from tests.parallel.harness import make_config, synthetic_batches


def test_fp16_overflow_skips_the_step_and_halves_the_scale():
    from gpt3d.train.runtime import init_runtime
    from gpt3d.train.trainer import Trainer
    cfg = make_config(["train.dtype=fp16", f"optim.initial_loss_scale={2.0 ** 22}"])
    trainer = Trainer(cfg, init_runtime(cfg, 0, 1, 0, 1))
    state = trainer.optimizer.states[0]
    assert state.model.dtype == torch.float16 and state.master.dtype == torch.float32
    applied, scales = [], []
    for batch in synthetic_batches(6, cfg.train.global_batch_size, cfg.train.seq_len, cfg.model.vocab_size):
        before = (state.master.clone(), state.model.clone(), state.exp_avg.clone())
        scale = trainer.scaler.scale
        result = trainer.train_step(batch)
        applied.append(result.applied)
        scales.append((scale, trainer.scaler.scale))
        if not result.applied:  # overflow: nothing moved, the scale halved
            assert trainer.scaler.scale == scale / 2
            for old, new in zip(before, (state.master, state.model, state.exp_avg)):
                assert torch.equal(old, new)
        else:
            assert trainer.scaler.scale == scale and not torch.equal(before[0], state.master)
            assert torch.equal(state.model, state.master.half())
    assert not applied[0], f"2^22 should overflow fp16 gradients: {scales}"
    assert applied[-1] and applied.index(True) < 5, scales
