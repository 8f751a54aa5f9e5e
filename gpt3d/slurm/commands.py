"""Running SLURM's client tools (sbatch, squeue, scontrol, scancel) with one clear error when they fail."""
from __future__ import annotations

import os
import subprocess
from typing import Optional, Sequence

# Phrases SLURM's clients print when the controller cannot be reached or no configuration is found.
_UNREACHABLE = ("Unable to contact slurm controller", "Could not establish a configuration source",
                "Connection refused", "Socket timed out", "Unable to process configuration file")


class SlurmError(RuntimeError):
    """A SLURM command failed or SLURM is not installed/reachable; the message quotes SLURM's own error."""


def run_slurm(argv: Sequence[str], *, input_text: Optional[str] = None, timeout: float = 60.0) -> str:
    """Run a SLURM client command and return its stdout; raise SlurmError with its stderr on failure."""
    tool = argv[0]
    try:
        result = subprocess.run(list(argv), input=input_text, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{tool}: command not found. SLURM's client tools are not installed or not on PATH "
                         f"(Debian/Ubuntu: apt-get install slurm-client; on a cluster: module load slurm)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{tool} did not answer within {timeout:.0f} s; is the SLURM controller overloaded or "
                         f"down?") from None
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}")
        hint = ""
        if any(phrase in message for phrase in _UNREACHABLE):
            conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
            hint = (f"\nSLURM's controller is unreachable or not configured (SLURM_CONF={conf}); run this on a login "
                    f"node of the cluster, or check that slurmctld is running")
        raise SlurmError(f"{' '.join(argv[:2])} failed:\n{message}{hint}")
    return result.stdout
