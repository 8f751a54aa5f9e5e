"""`gpt3d submit` before anything reaches SLURM: the rendered 175B script and the refusals of bad input."""
import re
from pathlib import Path

from .cli import gpt3d_submit

REPO = Path(__file__).resolve().parents[2]
PRESET = str(REPO / "configs" / "gpt3-175b.yaml")


def test_dry_run_of_the_175b_preset_on_128_a100_nodes(tmp_path):
    run_dir = tmp_path / "run175b"
    result = gpt3d_submit(PRESET, "--nodes", "128", "--gpus-per-node", "8", "--cluster", "a100-80gb",
                          "--partition", "gpu", "--account", "llm", "--time", "48:00:00", "--qos", "high",
                          "--constraint", "a100", "--out", str(run_dir), "--set", "train.steps=10", "--dry-run")
    assert result.code == 0, result.err
    script = result.out
    for line in ("#SBATCH --job-name=gpt3d-gpt3-175b", "#SBATCH --nodes=128", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=16", "#SBATCH --partition=gpu",
                 "#SBATCH --account=llm", "#SBATCH --time=48:00:00", "#SBATCH --qos=high",
                 "#SBATCH --constraint=a100", f"#SBATCH --output={run_dir}/slurm-%j.out",
                 f"#SBATCH --error={run_dir}/slurm-%j.err", "#SBATCH --signal=B:USR1@300", "#SBATCH --requeue",
                 "#SBATCH --open-mode=append", "export NCCL_IB_TIMEOUT=22",
                 'export MASTER_PORT=$((20000 + SLURM_JOB_ID % 10000))'):
        assert line + "\n" in script, f"missing {line!r} in:\n{script}"
    assert "scontrol show hostnames \"$SLURM_JOB_NODELIST\"" in script
    assert "srun --kill-on-bad-exit=1 --ntasks-per-node=8 --ntasks=$((SLURM_JOB_NUM_NODES * 8))" in script
    # dp is derived: 1024 GPUs / (tp 8 * pp 16) = 8; the overrides reach the training command too.
    assert (f"-m gpt3d train {PRESET} --out {run_dir} --tp 8 --pp 16 --dp 8 --set train.steps=10 &") in script
    assert "tp=8 x pp=16 x dp=8; fits a100-80gb: " in result.err and "GiB per GPU" in result.err
    assert "@{" not in script
    assert not run_dir.exists(), "a dry run must not touch the disk"


def test_h100_preset_and_cpu_only_omit_what_does_not_apply(tmp_path):
    h100 = gpt3d_submit(PRESET, "--nodes", "16", "--cluster", "h100-80gb", "--out", str(tmp_path / "r"), "--dry-run")
    assert h100.code == 0, h100.err
    assert "#SBATCH --gpus-per-node=8\n" in h100.out and "export NCCL_NVLS_ENABLE=1\n" in h100.out
    assert "--tp 8 --pp 16 --dp 1" in h100.out
    assert "#SBATCH --partition" not in h100.out and "#SBATCH --time" not in h100.out
    cpu = gpt3d_submit("tiny-test", "--nodes", "2", "--gpus-per-node", "2", "--cpu-only", "--out",
                       str(tmp_path / "r"), "--dry-run")
    assert cpu.code == 0, cpu.err
    assert "--gpus-per-node" not in cpu.out and "#SBATCH --ntasks-per-node=2\n" in cpu.out
    assert "--tp 1 --pp 1 --dp 4" in cpu.out and "memory check skipped (--cpu-only)" in cpu.err


def test_gpus_not_divisible_by_tp_times_pp_is_refused(tmp_path):
    result = gpt3d_submit(PRESET, "--nodes", "3", "--gpus-per-node", "8", "--out", str(tmp_path / "r"))
    assert result.code == 2 and result.out == ""
    assert ("3 nodes x 8 GPUs = 24 GPUs is not divisible by tp*pp = 8*16 = 128; use a multiple of 128 GPUs"
            in result.err), result.err
    assert "nothing was submitted" in result.err
    assert not (tmp_path / "r").exists()


def test_batch_not_divisible_by_data_parallel_is_refused(tmp_path):
    # 1536 sequences over dp = 2560 / 128 = 20 replicas do not split evenly.
    result = gpt3d_submit(PRESET, "--nodes", "320", "--gpus-per-node", "8", "--dry-run")
    assert result.code == 2
    assert "train.global_batch_size=1536 is not a multiple of micro_batch_size*dp = 1*20 = 20" in result.err


def test_missing_config_is_a_clear_error(tmp_path):
    result = gpt3d_submit(str(tmp_path / "nope.yaml"), "--nodes", "1", "--gpus-per-node", "8",
                          "--out", str(tmp_path / "r"))
    assert result.code == 2 and result.out == ""
    assert f"config: no such file '{tmp_path / 'nope.yaml'}'" in result.err
    assert not (tmp_path / "r").exists()


def test_unknown_cluster_and_bad_time_are_clear_errors(tmp_path):
    result = gpt3d_submit(PRESET, "--nodes", "128", "--cluster", "b200", "--dry-run")
    assert result.code == 2 and "cluster: no preset 'b200'; known: a100-80gb, h100-80gb" in result.err
    result = gpt3d_submit(PRESET, "--nodes", "128", "--time", "two days", "--dry-run")
    assert result.code == 2 and "--time 'two days': use SLURM's format" in result.err


def test_175b_without_model_parallelism_does_not_fit_and_is_refused_with_numbers(tmp_path):
    # 192 nodes x 8 = 1536 GPUs at tp 1, pp 1: every GPU would hold all 175B parameters.
    result = gpt3d_submit(PRESET, "--nodes", "192", "--cluster", "a100-80gb", "--set", "parallel.tp=1",
                          "--set", "parallel.pp=1", "--out", str(tmp_path / "r"))
    assert result.code == 2 and result.out == ""
    assert "1536 ranks: tp=1 x pp=1 x dp=1536 on a100-80gb" in result.err
    assert re.search(r"needs [\d.]+ GiB per GPU \(params [\d.]+", result.err), result.err
    assert "a100-80gb has 80 GiB" in result.err and "nothing was submitted" in result.err
    assert not (tmp_path / "r").exists()


def test_time_limit_shorter_than_the_stop_signal_lead_is_refused():
    # SLURM would signal at once and the run would requeue forever without training a step.
    result = gpt3d_submit(PRESET, "--nodes", "128", "--time", "4:00", "--dry-run")
    assert result.code == 2
    assert ("--time 4:00 (240 s) leaves no training time before the stop signal 300 s before the end" in result.err)
    ok = gpt3d_submit(PRESET, "--nodes", "128", "--time", "4:00", "--signal-seconds", "60", "--dry-run")
    assert ok.code == 0 and "#SBATCH --time=4:00\n" in ok.out and "#SBATCH --signal=B:USR1@60\n" in ok.out
