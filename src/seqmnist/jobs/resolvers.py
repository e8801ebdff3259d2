"""The ``${seqmnist.*:...}`` resolvers of ``conf/``, registered by whoever composes a config
(the commands through ``seqmnist.shell``, the benchmarks, the tests) rather than as a side
effect of importing the modules that define them."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf

from seqmnist.data.idx import default_data_root
from seqmnist.jobs import cluster, preflight, tracking


def launch_env(name: str, default: str | None = None) -> str | None:
    """An environment variable as the sweep saw it (else ``default``). Cached: a config keeps
    the value it first resolved, and Hydra gives a sweep's cache to each job it launches (as
    it keeps ``${now:}`` the sweep's time), so a job whose node lacks the variable still has
    the sweep's value, once the sweep has resolved it (seqmnist.jobs.preflight does)."""
    return os.environ.get(name) or default


# Resolvers whose value a config keeps once resolved (OmegaConf's use_cache).
CACHED = frozenset({"seqmnist.launch_env"})


def resolvers() -> dict[str, Callable[..., Any]]:
    """Resolver name -> function."""
    return {
        "seqmnist.data_root": default_data_root,
        "seqmnist.experiment_name": tracking.experiment_name,
        "seqmnist.wandb_offline": tracking.wandb_offline,
        "seqmnist.abspath": tracking.absolute,
        "seqmnist.mlflow_artifacts": tracking.artifact_location,
        "seqmnist.launch_env": launch_env,
        "seqmnist.tasks_per_node": cluster.devices_per_node,
        "seqmnist.gpus_per_node": cluster.gpus_per_node,
        "seqmnist.sbatch_export": preflight.sbatch_export,
    }


def register_resolvers() -> None:
    """Register each resolver once; call before a config of ``conf/`` is composed."""
    for name, fn in resolvers().items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=name in CACHED)
