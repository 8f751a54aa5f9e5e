"""One private localhost SLURM cluster for the whole tests/slurm session, torn down even when tests fail."""
import os
from pathlib import Path

import pytest

from .cluster import LocalSlurmCluster

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def slurm_cluster():
    cluster = LocalSlurmCluster()
    saved = {name: os.environ.get(name) for name in ("SLURM_CONF", "PYTHONPATH")}
    # gpt3d's own sbatch/scontrol calls and the jobs (sbatch exports the submitter's environment) use this cluster
    # and this checkout.
    os.environ["SLURM_CONF"] = str(cluster.conf)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), saved["PYTHONPATH"]) if p)
    cluster.env.update(SLURM_CONF=str(cluster.conf), PYTHONPATH=os.environ["PYTHONPATH"])
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
