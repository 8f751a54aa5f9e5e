"""`gpt3d submit` refuses what the dry run says will not fit, with the dry run's figures and the smallest changes."""
from tests.slurm.cli import gpt3d_submit

XL_MB16 = """preset: gpt3-xl
parallel:
  tp: 1
  pp: 1
  recompute: none
train:
  micro_batch_size: 16
  global_batch_size: 512
"""


def test_submit_refuses_a_layout_the_dry_run_does_not_fit(tmp_path):
    config = tmp_path / "xl.yaml"
    config.write_text(XL_MB16)
    result = gpt3d_submit(str(config), "--nodes", "4", "--gpus-per-node", "8", "--cluster", "a100-80gb",
                          "--out", str(tmp_path / "run"), "--dry-run")
    assert result.code == 2
    # bf16 logits stay bf16 for the loss (gpt3d.model.cross_entropy.loss_workspace): 16 x 2048 x 50304 x 2 bytes
    # (3.1 GiB) fewer than with an fp32 copy, which also took the 3.1 GiB of temporaries
    assert result.err == (
        "gpt3d submit: error: 4 node(s) x 8 = 32 ranks: tp=1 x pp=1 x dp=32 on a100-80gb: the dry run of rank 0 (first "
        "pipeline stage) needs 75.4 GiB per GPU (params 2.5, grads 4.9, optimizer 14.7, activations 52.9, comm 0.0, "
        "temporaries 0.3, nccl 0.1) but a100-80gb has 80 GiB (73.6 GiB usable); smallest changes that fit (planner "
        "GiB, leaving 0.3 GiB for temporaries): recompute=full (28.5 GiB) or distributed_optimizer=true (63.9 GiB) or "
        "micro_batch=8 (the largest that fits) (50.1 GiB) or pp=2 (dp=16) (65.1 GiB) or tp=2 (dp=16) (45.4 GiB)\n"
        "nothing was submitted\n")
    assert not (tmp_path / "run").exists()
