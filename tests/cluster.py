"""The local cluster of ``make cluster-up`` (scripts/local_cluster.sh), as the tests marked
``cluster`` find it: two SLURM nodes, PostgreSQL and an MLflow server on this machine.

Its environment (SLURM_CONF, SEQMNIST_PG_URL, MLFLOW_TRACKING_URI) comes from
``outputs/cluster/env.sh``, else from the test's own environment. When it is not up the
tests skip with the reason; under CI (whose ``.ci/run`` starts it) a skip fails
(tests/skip_rule.py).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from seqmnist.jobs.search import WAITING_STATES
from tests.helpers import PROJECT_ROOT, run_sweep

ENV_FILE = PROJECT_ROOT / "outputs" / "cluster" / "env.sh"
KEYS = ("SLURM_CONF", "SEQMNIST_PG_URL", "MLFLOW_TRACKING_URI")

# Jobs of one CPU and no memory request: each of the two nodes has one CPU.
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=null",
    "hydra.launcher.timeout_min=10",
]


def down_slurm_conf(folder: Path) -> Path:
    """A slurm.conf whose controller nobody runs (a port nothing listens on): a cluster
    that is down. SLURM's commands say so at once (a missing file they retry for a minute)."""
    conf = folder / "slurm.conf"
    conf.write_text(
        "ClusterName=down\nSlurmctldHost=localhost\nSlurmctldPort=9\nMessageTimeout=1\n"
        "NodeName=n1 CPUs=1\nPartitionName=p Nodes=n1 Default=YES\n"
    )
    return conf


def _from_env_file() -> dict[str, str]:
    found: dict[str, str] = {}
    if ENV_FILE.is_file():
        for line in ENV_FILE.read_text().splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export ") :].partition("=")
                found[key] = shlex.split(value)[0] if value else ""
    return found


def _why_down(env: dict[str, str]) -> str | None:
    missing = [k for k in KEYS if not env.get(k)]
    if missing:
        return f"no {', '.join(missing)} (make cluster-up writes {ENV_FILE})"
    ping = subprocess.run(
        ["scontrol", "ping"], env={**os.environ, **env}, capture_output=True, text=True
    )
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return f"slurmctld does not answer: {(ping.stdout + ping.stderr).strip()[:200]}"
    try:
        urllib.request.urlopen(env["MLFLOW_TRACKING_URI"] + "/health", timeout=5)
    except OSError as e:
        return f"the MLflow server does not answer: {e}"
    return None


def cluster_env() -> dict[str, str]:
    """The cluster's variables, or a skip (a failure when the cluster is required)."""
    env = _from_env_file() or {k: os.environ[k] for k in KEYS if os.environ.get(k)}
    try:
        why = _why_down(env)
    except FileNotFoundError as e:  # no scontrol: SLURM is not installed
        why = f"SLURM is not installed ({e.filename})"
    if why is None:
        return env
    pytest.skip(f"the local cluster is not up: {why}. Start it with: make cluster-up")


def _queue_and_nodes(env: dict[str, str]) -> tuple[list[str], list[str]]:
    def ask(*cmd: str) -> list[str]:
        out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]

    jobs = ask("squeue", "-h", "-o", "%i %j %T")
    nodes = ask("sinfo", "-h", "-N", "-o", "%N %T")
    return jobs, nodes


def wait_for_an_idle_cluster(env: dict[str, str], timeout: float = 240) -> None:
    """Wait until no job is queued and every node is idle: a test that sizes its jobs to the
    two one-CPU nodes (the DDP job needs both) must not start beside an earlier test's jobs.
    The cluster tests run one at a time (tests/conftest.py's ``cluster`` group), so the wait
    covers only jobs still ending; past the timeout the test fails and names them."""
    deadline = time.monotonic() + timeout
    while True:
        jobs, nodes = _queue_and_nodes(env)
        busy = [n for n in nodes if not n.endswith(" idle")]
        if not jobs and nodes and not busy:
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"the local cluster is still busy after {timeout:.0f} s: jobs {jobs or 'none'}, "
                f"nodes {nodes or 'none found'}; an earlier test left them (scancel them, or "
                "make cluster-down && make cluster-up)"
            )
        time.sleep(1)


def sweep_on_slurm(
    root: Path, sweep: Path, *args: str, env: dict[str, str], timeout: float = 400
) -> subprocess.CompletedProcess:
    """``python -m seqmnist.train -m`` with each job an sbatch job of the local cluster."""
    return run_sweep(*SLURM, *args, root=root, sweep_dir=sweep, env=env, timeout=timeout)


def sacct_states(job_ids: list[str], env: dict[str, str], timeout: float = 60) -> dict[str, str]:
    """SLURM's accounting of each job, once it has ended: its state (COMPLETED, CANCELLED,
    FAILED, ...). A sweep has its jobs' results as soon as their Python returns, while
    slurmd and slurmdbd record the batch script's end a moment later: the states are read
    until none is still one of ``WAITING_STATES``, for up to ``timeout`` seconds (then as
    they are)."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        states = dict(line.split("|", 1) for line in out.split() if "|" in line)
        settled = len(states) == len(job_ids) and not any(
            v.split(" ", 1)[0] in WAITING_STATES for v in states.values()
        )
        if settled or time.monotonic() > deadline:
            return states
        time.sleep(1)


def sacct_runs(job: str, cluster: dict[str, str]) -> list[str]:
    """Every start of a job (``-D``: requeued ones too), oldest first: their states."""
    return subprocess.run(
        ["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job],
        env={**os.environ, **cluster},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


def slurm_job_ids(sweep: Path) -> list[str]:
    """The SLURM job ids of a sweep's jobs (``12_0``, ``12_1`` for the tasks of an array),
    from submitit's folders."""
    return sorted(p.parent.name for p in (sweep / ".submitit").glob("*/*_submitted.pkl"))


def wait_for(condition, timeout: float, what: str, interval: float = 0.5) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")
