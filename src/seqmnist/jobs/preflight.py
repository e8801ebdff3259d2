"""Before a sweep submits anything to SLURM (``hydra/launcher=slurm``): the cluster answers,
and it has the nodes and CPUs the jobs ask for. Otherwise one message and exit status 2,
before the sweep dir or a study is made, instead of submitit's traceback for each refusal.

A Hydra callback (conf/hydra/default.yaml), so every sweeper gets it. It also bounds the
sweep's wait on its jobs while SLURM's accounting (sacct) fails: seqmnist.jobs.slurm_watch.
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
from seqmnist.jobs.search import PASSWORD_ENV

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


# -- what the jobs are given beside their config --------------------------------------
# The environment variables a SLURM job reads, in one list: the launcher's sbatch --export
# names them (conf/hydra/launcher/slurm.yaml, through sbatch_export).
JOB_ENV: tuple[str, ...] = (
    PASSWORD_ENV,  # the Optuna storage's password, put there by the sweep (jobs.search)
    "PGPASSWORD",  # or PostgreSQL's own
    "MLFLOW_TRACKING_URI",  # conf/logger/mlflow.yaml
    "MLFLOW_TRACKING_USERNAME",  # a tracking server's login, read by MLflow's client
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "WANDB_API_KEY",  # jobs.tracking.wandb_offline, and wandb itself
    "WANDB_MODE",
    "WANDB_BASE_URL",
    "SEQMNIST_DATA_ROOT",  # conf/paths/default.yaml, data.idx.default_data_root
    "SEQMNIST_PROJECT_ROOT",
    "SLURM_CONF",  # a requeue's scontrol, where slurm.conf is not the system's
)


def sbatch_export() -> str:
    """sbatch's ``--export`` for the SLURM launcher: the submitting environment (ALL) and
    :data:`JOB_ENV` by name. A name alone makes sbatch copy the value it finds in its own
    environment; ``NAME=value`` would write the value (the password) into the job's script."""
    return ",".join(("ALL", *JOB_ENV))


def keep_job_env(launcher: DictConfig) -> None:
    """This sweep's sbatch calls export what the launcher says. sbatch takes SBATCH_EXPORT
    from its environment over the script's ``#SBATCH --export`` line, and a site's (or a
    user's) SBATCH_EXPORT=NONE starts a submitit job without even the variables submitit's
    script sets: it fails before the run starts. The entries given there beside
    ALL/NONE are kept."""
    export = OmegaConf.select(launcher, "additional_parameters.export")
    given = os.environ.get("SBATCH_EXPORT")
    if not export or given is None or given == str(export):
        return
    ours = str(export).split(",")
    extra = [e for e in given.split(",") if e and e.upper() not in ("ALL", "NONE", "NIL")]
    os.environ["SBATCH_EXPORT"] = ",".join([*ours, *(e for e in extra if e not in ours)])
    log.info(
        f"SBATCH_EXPORT={given} here; the jobs are submitted with {os.environ['SBATCH_EXPORT']}"
    )


def check_tracking(config: DictConfig) -> None:
    """An MLflow store the jobs can share. Resolving the URI here also makes it the sweep's:
    the config keeps the value in its resolver cache, which Hydra hands to every job
    (``seqmnist.launch_env`` in conf/logger/mlflow.yaml), so a job logs where its sweep
    chose, whatever its node's environment."""
    node = OmegaConf.select(config, "logger.mlflow")
    if not node or "_target_" not in node:
        return
    uri = str(node.get("tracking_uri") or "")
    if uri.startswith("sqlite:"):
        raise ConfigError(
            f"logger.mlflow.tracking_uri={uri}: SQLite's file locks are unreliable on the "
            "network file systems a SLURM cluster shares (NFS, Lustre), and every job of the "
            "sweep writes to it at once. Fix: a tracking server: make cluster-up, then source "
            "outputs/cluster/env.sh (it sets MLFLOW_TRACKING_URI), or one of your own: "
            "logger.mlflow.tracking_uri=http://HOST:PORT."
        )


class SlurmPreflight(Callback):
    """Runs :func:`check_slurm` when a multirun starts on the SLURM launcher, then bounds how
    long the sweep waits for its jobs while SLURM's accounting fails (:mod:`.slurm_watch`)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = OmegaConf.select(config, "hydra.launcher")
        if launcher is None or not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
            return
        # Here, not in the launcher or a sweeper: this runs in the sweep's process before any
        # job is submitted, whichever sweeper (basic or Optuna) then waits on the jobs.
        from seqmnist.jobs import slurm_watch  # imports submitit: on the SLURM path only

        try:
            check_tracking(config)  # before the cluster is asked anything
            check_slurm(launcher)
            keep_job_env(launcher)
            sacct_bound_s = slurm_watch.sacct_timeout_s()
        except ConfigError as e:
            log.error(str(e))
            sys.exit(e.EXIT_CODE)
        sweep_dir = str(OmegaConf.select(config, "hydra.sweep.dir"))
        slurm_watch.watch_slurm_jobs(sweep_dir, sacct_bound_s)
