"""Cluster presets (configs/clusters/*.yaml): what a node has and how jobs are set up on it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from gpt3d.config.base import ConfigError, field, from_dict, load_yaml, require
from gpt3d.config.run import REPO_CONFIGS
from gpt3d.planner.hardware import GPUS

CLUSTERS_DIR = REPO_CONFIGS / "clusters"


@dataclass
class ClusterConfig:
    name: str = field(doc="preset name")
    gpu: str = field(doc="GPU model, a key of gpt3d.planner.hardware.GPUS (a100-80gb, a100-40gb, h100-80gb)")
    gpus_per_node: int = field(8, doc="GPUs per node = tasks per node (one rank per GPU)")
    cpus_per_task: int = field(8, doc="CPU cores per rank (data loading, OMP_NUM_THREADS)")
    intra_node: str = field("", doc="interconnect within a node (documentation; TP groups stay inside it)")
    inter_node: str = field("", doc="interconnect between nodes (documentation; DP and PP cross it)")
    env: dict[str, str] = field(default_factory=dict, doc="environment exported before srun (NCCL_*, CUDA_*)")
    setup: list[str] = field(default_factory=list, doc="shell lines run before srun: module load, conda activate, ...")
    sbatch: list[str] = field(default_factory=list, doc="extra #SBATCH options, e.g. --exclusive")
    srun: list[str] = field(default_factory=list, doc="extra srun options, e.g. --container-image=... (pyxis)")

    def __post_init__(self) -> None:
        require(self.gpus_per_node >= 1, "cluster.gpus_per_node", f"must be >= 1, got {self.gpus_per_node}")
        require(self.cpus_per_task >= 1, "cluster.cpus_per_task", f"must be >= 1, got {self.cpus_per_task}")
        for key, value in self.env.items():
            require(isinstance(value, (str, int, float)) and not isinstance(value, bool), f"cluster.env.{key}",
                    f"must be a string or number, got {value!r}")
        self.env = {str(k): str(v) for k, v in self.env.items()}


def known_clusters() -> list[str]:
    return sorted(p.stem for p in CLUSTERS_DIR.glob("*.yaml"))


def load_cluster(name_or_path: str | os.PathLike) -> ClusterConfig:
    """A cluster preset by name (configs/clusters/NAME.yaml) or a YAML path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CLUSTERS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"cluster: no preset {str(name_or_path)!r}; known: {', '.join(known_clusters())} "
                          f"(or pass a YAML path shaped like configs/clusters/a100-80gb.yaml)")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"cluster {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"cluster {path}: expected a mapping, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    cluster = from_dict(ClusterConfig, data, "cluster")
    known = sorted(GPUS)
    if cluster.gpu not in known:
        raise ConfigError(f"cluster.gpu: {cluster.gpu!r} in {path} is not a GPU the planner knows; "
                          f"use one of {', '.join(known)}")
    return cluster

