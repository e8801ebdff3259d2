"""Searches against what clusters do, run as a user runs them: a killed sweep continued, jobs
that outlive their sweep, a job lost without a result, two sweeps sharing one study."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.helpers import ONE_THREAD, run_module
from tests.hydra_plugins.searches import (
    distinct_params,
    finished,
    postgres_study,
    search,
    start_search,
    study_of,
)

# The same searches against the local cluster's PostgreSQL server (make cluster-up).
POSTGRES = pytest.param("postgresql", marks=[pytest.mark.cluster, pytest.mark.slow])


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen, log: Path
) -> None:
    """Wait for ``condition``; fail naming ``what``, with the end of the sweep's log, when it
    does not come within ``timeout`` seconds or the sweep ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"the sweep ended ({proc.returncode})" if proc.poll() is not None else "timeout"
            tail = log.read_text()[-3000:] if log.is_file() else "(no log)"
            pytest.fail(f"{what}: not within {timeout:.0f} s ({why}); its log ends:\n{tail}")
        time.sleep(0.3)


@contextlib.contextmanager
def ended_at_exit(procs: list[subprocess.Popen]) -> Iterator[None]:
    """Kill the process group of every sweep in ``procs`` (the sweep and its jobs) at the end,
    passing or failing: no sweep or job outlives its test."""
    try:
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its jobs too, once the sweep is gone
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)


@pytest.mark.e2e
@pytest.mark.parametrize("storage", ["sqlite", "journal", POSTGRES])
def test_a_killed_search_continues_where_it_stopped(
    synthetic_root: Path, tmp_path: Path, storage: str
) -> None:
    """A sweep killed with its running trial (SIGKILL, as a lost login node or an OOM kill of
    the whole search): the same command run again keeps the finished trials, fails the killed
    one once its heartbeat is stale, says so in its metrics.json and the report, and runs the
    trials left under new numbers."""
    sweep = tmp_path / "sweep"
    name = "seqmnist"
    if storage == "postgresql":
        url, name = postgres_study()
    elif storage == "sqlite":
        url = f"sqlite:///{sweep / 'optuna.db'}"
    else:
        url = str(sweep / "study.log")
    held = tmp_path / "held"
    args = search(
        synthetic_root,
        sweep,
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.pruner=none",
        f"hydra.sweeper.storage={url}",
        f"hydra.sweeper.study_name={name}",
        # Trial 1 is held in its training until the kill (never released): trial 0 has
        # finished by then, and trial 1 is running and has written its metrics.json.
        "+callbacks.hold._target_=tests.helpers.HoldUntil",
        "+callbacks.hold.job=1",
        f"+callbacks.hold.release={tmp_path / 'never'}",
        f"+callbacks.hold.held={held}",
    )
    log = tmp_path / "first.log"
    proc = start_search(args, log)
    with ended_at_exit([proc]):
        wait_until(lambda: (held / "1").exists(), 240, "trial 1 held in its training", proc, log)
        wait_until(
            lambda: (sweep / "1" / "metrics.json").is_file(),
            30,
            "trial 1's metrics.json",
            proc,
            log,
        )
        states = {t.number: t.state for t in study_of(sweep, url, name).get_trials()}
        assert states == {0: TrialState.COMPLETE, 1: TrialState.RUNNING}, states
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its running trial, at once
        proc.wait()
    kept = {
        t.number: t.params
        for t in study_of(sweep, url, name).get_trials()
        if t.state == TrialState.COMPLETE
    }
    assert list(kept) == [0]

    again = run_module(*args, env=ONE_THREAD)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    study = study_of(sweep, url, name)
    ended = finished(study)
    assert len(ended) == 4  # exactly n_trials finished trials
    assert all(study.trials[n].params == p for n, p in kept.items())  # nothing lost or rerun
    assert distinct_params(ended)  # no parameter set ran twice
    killed = [t.number for t in study.get_trials() if t.state == TrialState.FAIL]
    assert killed == [1]  # the trial running at the kill, marked failed via its heartbeat
    assert max(t.number for t in ended) > 1  # numbering went on
    record = json.loads((sweep / "1" / "metrics.json").read_text())
    assert record["status"] == "interrupted" and "heartbeat" in record["error"], record
    assert "| failed |" in (sweep / "results.md").read_text()  # its state in the report


# The silence after which a sweep fails a running trial, in the test of jobs that outlive
# their sweep: much longer than the jobs' heartbeat interval (SEARCH: 1 s), and than the
# moments a job does not beat (its start, between fit and test, before it tells its result),
# even on a loaded machine.
GRACE = 12


@pytest.mark.e2e
def test_jobs_that_outlive_their_sweep_keep_their_trials_and_tell_them(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """A sweep killed while its jobs run on (SLURM jobs; here submitit's local processes).
    The command run again finds their trials running, with no sweep beating for them: only
    the jobs' own heartbeats keep them from going stale. It waits for them, and the jobs tell
    their results: none failed as stale, none run again.

    The jobs are held in their training until the second sweep has continued the study and
    has run its stale check past the grace period since the first sweep died, so the two
    overlap however fast or slow the machine."""
    sweep = tmp_path / "sweep"
    release, held = tmp_path / "release", tmp_path / "held"
    args = [
        *(a for a in search(synthetic_root, sweep) if not a.startswith("hydra.sweeper.grace")),
        f"hydra.sweeper.grace_period={GRACE}",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.pruner=none",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        "+callbacks.hold._target_=tests.helpers.HoldUntil",
        f"+callbacks.hold.release={release}",
        f"+callbacks.hold.held={held}",
    ]
    first_log, again_log = tmp_path / "first.log", tmp_path / "again.log"
    first = start_search(args, first_log)
    sweeps = [first]
    with ended_at_exit(sweeps):  # the first sweep's group holds its jobs
        wait_until(
            lambda: all((held / j).exists() for j in ("0", "1")),
            240,
            "both jobs held in their training",
            first,
            first_log,
        )
        os.kill(first.pid, signal.SIGKILL)  # the sweep alone: its jobs run on
        first.wait()
        killed = time.monotonic()

        again = start_search(args, again_log)
        sweeps.append(again)
        wait_until(
            lambda: "(continued)" in again_log.read_text(),
            120,
            "the second sweep continuing the study",
            again,
            again_log,
        )
        # Its stale check runs as it continues, then every second: wait through a few, at
        # least one of them past the grace period since the first sweep's last beat. Any
        # trial its job did not keep beating would be failed by now.
        time.sleep(max(3.0, killed + GRACE + 3 - time.monotonic()))
        states = [t.state for t in study_of(sweep).get_trials()]
        assert states == [TrialState.RUNNING] * 2, (states, again_log.read_text()[-3000:])
        for job in ("0", "1"):  # both still in their training: the two sweeps overlapped
            assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "running"

        release.touch()
        try:
            again.wait(timeout=240)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the second sweep did not end: {again_log.read_text()[-3000:]}")
    out = again_log.read_text()
    assert again.returncode == 0, out[-3000:]
    states = [t.state for t in study_of(sweep).get_trials()]
    assert states == [TrialState.COMPLETE] * 2, states  # none failed, none run again
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1"]


@pytest.mark.e2e
@pytest.mark.parametrize("storage", ["sqlite", POSTGRES])
def test_two_workers_share_one_study(synthetic_root: Path, tmp_path: Path, storage: str) -> None:
    url, name = f"sqlite:///{tmp_path / 'shared.db'}", "seqmnist"
    if storage == "postgresql":
        url, name = postgres_study()
    workers: list[subprocess.Popen] = []
    with ended_at_exit(workers):
        for i in range(2):
            args = search(
                synthetic_root,
                tmp_path / f"w{i}",
                "hydra.sweeper.n_trials=5",
                "hydra.sweeper.pruner=none",
                f"hydra.sweeper.storage={url}",
                f"hydra.sweeper.study_name={name}",
            )
            workers.append(start_search(args, tmp_path / f"w{i}.log"))
        for i, w in enumerate(workers):
            code = w.wait(timeout=300)
            assert code == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]
    study = study_of(tmp_path, url, name)
    ended = finished(study)
    assert len(ended) == 5 and distinct_params(ended)
    run_dirs = [
        p.parent.name for i in range(2) for p in (tmp_path / f"w{i}").glob("*/metrics.json")
    ]
    assert sorted(run_dirs, key=int) == sorted(str(t.number) for t in ended)  # each ran once
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    assert all(f"Optuna study '{name}'" in text for text in logs)
    # One created the study, the other joined it and drew its own stream: with one seed, two
    # sweeps started together would propose the same settings, to be closed unrun.
    assert sorted("(new)" in text for text in logs) == [False, True]
    repeats = [k for k, v in study.user_attrs.items() if v == "repeat of an earlier trial"]
    assert not repeats, repeats


@pytest.mark.e2e
def test_a_lost_job_fails_its_trial_and_the_search_goes_on(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """A job that ends without a result (here SIGKILLed at its first training batch, as by the
    OOM killer) makes submitit's launcher raise. With n_jobs=2 each trial is launched alone,
    so that launch holds the lost job's trial only: the sweep does not die, the trial is left
    running as an orphan, holding one of the two slots while the other runs trials, until its
    heartbeat goes stale and it is failed and counted as this sweep's failure; the search
    ends with its n_trials complete trials. (A launch of several jobs whose other jobs run
    on, and the slots orphans hold, in-process: test_sweep_loop.py.)"""
    sweep = tmp_path / "sweep"
    proc = run_module(
        *search(
            synthetic_root,
            sweep,
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.pruner=none",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=5",
            "+callbacks.killer._target_=tests.helpers.KillJob",
            "+callbacks.killer.job=0",
        ),
        env=ONE_THREAD,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "ended without a result" in out
    assert "trial 0 failed: its job was lost (" in out  # the orphan, once failed stale
    states = {t.number: t.state for t in study_of(sweep).get_trials()}
    # The lost job's trial failed once its heartbeat went stale; the search went on without it.
    assert states[0] == TrialState.FAIL and states[1] == TrialState.COMPLETE
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 3
    assert json.loads((sweep / "1" / "metrics.json").read_text())["status"] == "completed"
    lost = json.loads((sweep / "0" / "metrics.json").read_text())
    # Its own reason, not "its sweep stopped": the sweep ran on.
    assert lost["status"] == "interrupted" and "its job was lost" in lost["error"], lost
