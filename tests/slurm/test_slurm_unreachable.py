"""status/cancel/submit without a reachable SLURM: one clear error each, nothing submitted."""
import socket

from .cli import gpt3d_cancel, gpt3d_status, gpt3d_submit


def test_no_controller_is_named(monkeypatch, tmp_path):
    # A valid configuration whose controller port nobody listens on.
    conf = tmp_path / "slurm.conf"
    conf.write_text(f"ClusterName=nobody\nSlurmctldHost=localhost\nSlurmctldPort={_free_port()}\nMessageTimeout=2\n"
                    f"NodeName=n1 CPUs=1 State=UNKNOWN\nPartitionName=p Nodes=n1 Default=YES\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    result = gpt3d_status()
    assert result.code == 1 and result.out == ""
    assert "gpt3d status: error: squeue --user failed" in result.err
    assert "Unable to contact slurm controller" in result.err
    assert f"SLURM's controller is unreachable or not configured (SLURM_CONF={conf})" in result.err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_slurm_not_installed_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no SLURM client tools
    status = gpt3d_status("42")
    assert status.code == 1
    assert "scontrol: command not found. SLURM's client tools are not installed or not on PATH" in status.err
    cancel = gpt3d_cancel("42")
    assert cancel.code == 1 and "scontrol: command not found" in cancel.err
    submit = gpt3d_submit("tiny-test", "--nodes", "1", "--gpus-per-node", "1", "--cpu-only",
                          "--out", str(tmp_path / "run"))
    assert submit.code == 1 and "sbatch: command not found" in submit.err and "nothing was submitted" in submit.err
    assert not (tmp_path / "run").exists()
