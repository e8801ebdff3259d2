"""Before a sweep submits anything to SLURM (``hydra/launcher=slurm``): the cluster answers,
and it has the nodes and CPUs the jobs ask for. Otherwise one message and exit status 2,
before the sweep dir or a study is made, instead of submitit's traceback for each refusal.

A Hydra callback (conf/hydra/default.yaml), so every sweeper gets it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from seqmnist.core.errors import ConfigError

log = logging.getLogger("seqmnist.slurm")


def _slurm(*args: str, timeout: float = 20) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ConfigError(
            f"hydra/launcher=slurm needs SLURM's commands, and {args[0]} is not installed here. "
            "Fix: run the sweep on a machine of the cluster (a login node), or try the local "
            "one: make cluster-up, then source outputs/cluster/env.sh."
        ) from None
    except subprocess.TimeoutExpired:
        done = subprocess.CompletedProcess(args, 1, "", f"no answer within {timeout:.0f} s")
    if done.returncode != 0:
        said = " ".join((done.stderr or done.stdout).split())[:300]
        conf = os.environ.get("SLURM_CONF")
        where = f"SLURM_CONF={conf}" if conf else "the system's slurm.conf"
        raise ConfigError(
            f"the SLURM cluster does not answer ({' '.join(args)}: {said}; {where}). Fix: "
            "check that slurmctld runs and SLURM_CONF names its slurm.conf; for the local "
            "cluster: make cluster-up, then source outputs/cluster/env.sh."
        )
    return done.stdout


def partition_size(partition: str | None) -> tuple[int, int, int]:
    """(nodes, most CPUs of one node, most memory of one node in MB) of a partition (the
    default one when None)."""
    args = ["sinfo", "-h", "-N", "-o", "%N %c %m %P"]
    if partition:
        args += ["-p", partition]
    lines = [line.split() for line in _slurm(*args).splitlines() if line.strip()]
    if not partition:  # the default partition is marked with a '*'
        lines = [line for line in lines if line[3].endswith("*")]
    names = {line[0] for line in lines}
    cpus = max((int(line[1]) for line in lines if line[1].isdigit()), default=0)
    memory = max((int(line[2]) for line in lines if line[2].isdigit()), default=0)
    return len(names), cpus, memory


def check_slurm(launcher: DictConfig) -> None:
    """The cluster answers and can give the job shape asked for (nodes, CPUs per node)."""
    conf = os.environ.get("SLURM_CONF")
    if conf and not os.path.isfile(conf):  # SLURM's commands would retry for a minute
        raise ConfigError(
            f"SLURM_CONF={conf}: no such file. Fix: point SLURM_CONF at the cluster's "
            "slurm.conf, or unset it; for the local cluster: make cluster-up, then source "
            "outputs/cluster/env.sh."
        )
    _slurm("scontrol", "ping")
    partition = launcher.get("partition")
    nodes, cpus, memory = partition_size(partition)
    where = f"partition {partition}" if partition else "the default partition"
    asked = int(launcher.get("nodes") or 1)
    if nodes == 0:
        raise ConfigError(
            f"{where} has no nodes (sinfo). Fix: name a partition that has some, e.g. "
            "hydra.launcher.partition=NAME (sinfo lists them)."
        )
    if asked > nodes:
        raise ConfigError(
            f"the jobs ask for {asked} nodes (trainer.num_nodes) and {where} has {nodes}. "
            f"Fix: trainer.num_nodes={nodes} or fewer, or another hydra.launcher.partition."
        )
    tasks = int(launcher.get("tasks_per_node") or 1)
    per_node = tasks * int(launcher.get("cpus_per_task") or 1)
    if cpus and per_node > cpus:
        raise ConfigError(
            f"the jobs ask for {per_node} CPUs a node (tasks_per_node x "
            f"hydra.launcher.cpus_per_task) and the nodes of {where} have {cpus}. Fix: "
            f"hydra.launcher.cpus_per_task={max(1, cpus // tasks)} or fewer."
        )
    mem_gb = launcher.get("mem_gb")
    if memory and mem_gb and int(mem_gb) * 1024 > memory:
        raise ConfigError(
            f"the jobs ask for hydra.launcher.mem_gb={mem_gb} and the nodes of {where} have "
            f"{memory // 1024} GB. Fix: hydra.launcher.mem_gb={memory // 1024} or less, or "
            "hydra.launcher.mem_gb=null (the partition's default)."
        )


class SlurmPreflight(Callback):
    """Runs :func:`check_slurm` when a multirun starts on the SLURM launcher."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = OmegaConf.select(config, "hydra.launcher")
        if launcher is None or not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
            return
        try:
            check_slurm(launcher)
        except ConfigError as e:
            log.error(str(e))
            sys.exit(e.EXIT_CODE)
