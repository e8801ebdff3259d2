"""The ``${seqmnist.*:...}`` resolvers of ``conf/``, registered by whoever composes a config
(the commands through ``seqmnist.shell``, the benchmarks, the tests) rather than as a side
effect of importing the modules that define them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf

from seqmnist.data.idx import default_data_root
from seqmnist.jobs import cluster, tracking


def resolvers() -> dict[str, Callable[..., Any]]:
    """Resolver name -> function."""
    return {
        "seqmnist.data_root": default_data_root,
        "seqmnist.experiment_name": tracking.experiment_name,
        "seqmnist.wandb_offline": tracking.wandb_offline,
        "seqmnist.abspath": tracking.absolute,
        "seqmnist.mlflow_artifacts": tracking.artifact_location,
        "seqmnist.tasks_per_node": cluster.devices_per_node,
        "seqmnist.gpus_per_node": cluster.gpus_per_node,
    }


def register_resolvers() -> None:
    """Register each resolver once; call before a config of ``conf/`` is composed."""
    for name, fn in resolvers().items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
