"""Values rendered into the batch script stay inert in every shell context they land in: hostile --out, --env and
override values are rendered by `gpt3d submit --dry-run`, and every rendered line that is not SLURM's own
(#SBATCH, srun, scontrol) is executed by bash. No command substitution runs; the directory made is the literal one.
Plus the submit refusals of zero/negative counts and impossible time limits."""
from __future__ import annotations

import subprocess

import pytest

from .cli import gpt3d_submit

HOSTILE = ["x$(touch${IFS}PWNED1)", "x`touch${IFS}PWNED2`", "x';touch${IFS}PWNED3;'", 'x";touch${IFS}PWNED4;"',
           "x$(touch${IFS}PWNED5)'\"\\"]


def executable_lines(script: str) -> str:
    """The script's own shell lines up to srun, SLURM's commands left out (they need a job), then the rank command
    with `printf` in front, so bash parses it exactly as srun's shell would and prints the argv it would start."""
    before, after = script.split("# srun runs in the background")
    keep = [line for line in before.splitlines()
            if not line.strip().startswith(("#", "@")) and "scontrol" not in line and "head_" not in line]
    command = after.split("\\\n", 1)[1].split("\n", 1)[0].strip()
    assert command.endswith(" &"), command
    return "\n".join(keep) + "\nprintf '<%s>\\n' " + command[:-2]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_render_inert(tmp_path, value):
    work = tmp_path / "work"
    work.mkdir()
    out = work / value
    result = gpt3d_submit("tiny-test", "--nodes", "1", "--gpus-per-node", "2", "--cpu-only", "--dry-run",
                          "--out", str(out), "--env", f"GPT3D_NOTE={value}", "--set", f"checkpoint.resume={value}")
    assert result.code == 0, result.err
    lines = executable_lines(result.out)
    assert str(out) in result.out and "run_dir=" in lines
    proc = subprocess.run(["bash", "-c", "set -eu\n" + lines + '\nprintf %s "$GPT3D_NOTE" > note.txt'], cwd=work,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "1",
                               "SLURM_JOB_NODELIST": "n1", "MASTER_ADDR": "127.0.0.1"})
    assert proc.returncode == 0, proc.stderr + lines
    assert not any(p.name.startswith("PWNED") for p in work.rglob("*")), sorted(work.rglob("*"))
    assert out.is_dir() and (work / "note.txt").read_text() == value
    assert f"run directory {out}" in proc.stdout
    assert f"<--out>\n<{out}>\n" in proc.stdout and f"<--set>\n<checkpoint.resume={value}>\n" in proc.stdout


@pytest.mark.parametrize("flags, message", [
    (("--gpus-per-node", "0"), "--gpus-per-node 0: must be >= 1"),
    (("--gpus-per-node", "-2"), "--gpus-per-node -2: must be >= 1"),
    (("--cpus-per-task", "0"), "--cpus-per-task 0: must be >= 1"),
    (("--nodes", "0"), "--nodes 0: must be >= 1"),
    (("--time", "99:99:99"), "--time '99:99:99': minutes and seconds must be 0-59"),
    (("--time", "1-25:00:00"), "--time '1-25:00:00': minutes and seconds must be 0-59 (hours 0-23 after a day"),
    (("--time", "0"), "--time '0': the time limit must be above zero"),
])
def test_zero_negative_and_impossible_values_are_refused(tmp_path, flags, message):
    argv = ["tiny-test", "--nodes", "1", "--gpus-per-node", "2", "--cpu-only", "--dry-run", "--out", str(tmp_path)]
    if flags[0] in argv:
        argv[argv.index(flags[0]) + 1] = flags[1]
    else:
        argv += list(flags)
    result = gpt3d_submit(*argv)
    assert result.code == 2 and result.out == "", result.out
    assert result.err.startswith(f"gpt3d submit: error: {message}"), result.err
