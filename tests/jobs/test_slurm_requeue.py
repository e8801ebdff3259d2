"""A SLURM time limit that falls mid-run, the requeue that continues the job, and ``scancel``,
on the local cluster (``make cluster-up``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.cluster import sacct_runs, sacct_states, slurm_job_ids, sweep_on_slurm, wait_for
from tests.helpers import FAST, ONE_THREAD, PROJECT_ROOT, metrics_of, run_module, train_in_process
from tests.jobs.test_ddp import final_state
from tests.training.test_faults import SAME

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]

# Long enough (mostly asleep: 0.5 s a step, 128 steps) for SLURM's time-limit signal, which
# comes 30-60 s into a job of 2 minutes with signal_delay_s=60, to land mid-run.
LONG = [
    "trainer.max_epochs=16",
    "trainer.limit_train_batches=8",
    "callbacks.resume_checkpoint.every_n_train_steps=20",
]
SLOW = ["+callbacks.slow._target_=tests.helpers.SlowSteps", "+callbacks.slow.seconds=0.5"]


def time_limited_sweep(root: Path, sweep: Path, cluster: dict[str, str], *args: str) -> None:
    """A sweep of 2-minute SLURM jobs whose time-limit signal (SIGUSR2) comes 60 s before the
    limit, so some 30-60 s into a job; it must succeed."""
    proc = sweep_on_slurm(
        root,
        sweep,
        *args,
        "hydra.launcher.timeout_min=2",
        "hydra.launcher.signal_delay_s=60",
        env=cluster,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


def test_a_time_limit_mid_run_requeues_the_job_and_it_ends_as_if_never_stopped(
    synthetic_root: Path, tmp_path: Path, cluster: dict[str, str]
) -> None:
    """A sweep of two jobs (one SLURM array): job 0 is slow enough for its time limit to land
    mid-run and requeues its own array task; job 1 finishes first and must run once only (a
    requeue of the whole array would run it again)."""
    sweep = tmp_path / "sweep"
    time_limited_sweep(
        synthetic_root, sweep, cluster, *LONG, *SLOW, "+callbacks.slow.job=0", "seed=42,7"
    )
    run_dir = sweep / "0"
    log = (run_dir / "train.log").read_text()
    assert "stopped by SIGUSR2 (the job's time limit)" in log  # the signal came mid-run
    assert "requeued: started again, it continues from last.ckpt" in log
    assert "continuing from" in log
    job, other = slurm_job_ids(sweep)  # <array>_0, <array>_1
    runs = {j: sacct_runs(j, cluster) for j in (job, other)}
    assert runs[job][0] == "REQUEUED" and runs[job][-1] == "COMPLETED", runs  # started again
    assert runs[other] == ["COMPLETED"], runs  # the other task ran once
    assert "continuing from" not in (sweep / "1" / "train.log").read_text()
    assert metrics_of(sweep / "1")["status"] == "completed"

    resumed = metrics_of(run_dir)
    assert resumed["status"] == "completed" and resumed["resumed_from"].endswith("last.ckpt")
    never_stopped = train_in_process(synthetic_root, tmp_path / "never", *LONG)
    for key in SAME:
        assert resumed[key] == never_stopped[key], key
    a, b = final_state(run_dir), final_state(tmp_path / "never")
    assert all(torch.equal(a[k], b[k]) for k in a), "the weights differ"


def test_a_time_limit_once_the_fit_is_over_lets_the_job_complete(
    synthetic_root: Path, tmp_path: Path, cluster: dict[str, str]
) -> None:
    """The time-limit signal lands in the test (the run waits there for it): the run
    finishes, the job is not requeued, and SLURM records it COMPLETED."""
    sweep = tmp_path / "sweep"
    time_limited_sweep(
        synthetic_root, sweep, cluster, "+callbacks.wait._target_=tests.helpers.WaitInTest"
    )
    log = (sweep / "0" / "train.log").read_text()
    assert "SIGUSR2 (the job's time limit) during the run's test: it finishes first" in log
    assert "requeued" not in log
    assert metrics_of(sweep / "0")["status"] == "completed"
    (job,) = slurm_job_ids(sweep)
    time.sleep(1)
    assert sacct_runs(job, cluster) == ["COMPLETED"]


def test_scancel_leaves_the_run_interrupted_and_resumable(
    synthetic_root: Path, tmp_path: Path, cluster: dict[str, str]
) -> None:
    sweep = tmp_path / "sweep"
    cmd = [
        "seqmnist.train",
        "-m",
        f"data.root={synthetic_root}",
        f"hydra.sweep.dir={sweep}",
        *FAST,
        "hydra/launcher=slurm",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=null",
        *LONG,
        *SLOW,
    ]
    env = {**os.environ, **ONE_THREAD, **cluster, "PYTHONUNBUFFERED": "1"}
    sweeping = subprocess.Popen(
        [sys.executable, "-m", *cmd],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=(tmp_path / "sweep.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        last = sweep / "0" / "checkpoints" / "last.ckpt"
        wait_for(last.is_file, 120, "a mid-run last.ckpt")
        (job,) = slurm_job_ids(sweep)
        subprocess.run(["scancel", job], env=env, check=True)
        sweeping.wait(timeout=120)
    finally:
        if sweeping.poll() is None:
            os.killpg(sweeping.pid, signal.SIGKILL)
    stopped = metrics_of(sweep / "0")
    assert stopped["status"] == "interrupted" and "SIGTERM" in stopped["error"]
    assert "resume=" in stopped["error"]
    time.sleep(1)
    assert sacct_states([job], cluster)[job].startswith("CANCELLED")

    again = run_module(
        "seqmnist.train", f"resume={sweep / '0'}", "+callbacks.slow=null", env=ONE_THREAD
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert metrics_of(sweep / "0")["status"] == "completed"
