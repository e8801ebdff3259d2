"""Searches against what clusters do, run as a user runs them: a killed sweep continued, jobs
that outlive their sweep, a job lost without a result, two sweeps sharing one study."""

from __future__ import annotations

import json
import os
import signal
import time
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


@pytest.mark.e2e
@pytest.mark.parametrize("storage", ["sqlite", "journal", POSTGRES])
def test_a_killed_search_continues_where_it_stopped(
    synthetic_root: Path, tmp_path: Path, storage: str
) -> None:
    sweep = tmp_path / "sweep"
    name = "seqmnist"
    if storage == "postgresql":
        url, name = postgres_study()
    elif storage == "sqlite":
        url = f"sqlite:///{sweep / 'optuna.db'}"
    else:
        url = str(sweep / "study.log")
    args = search(
        synthetic_root,
        sweep,
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.pruner=none",
        f"hydra.sweeper.storage={url}",
        f"hydra.sweeper.study_name={name}",
        "+callbacks.slow._target_=tests.helpers.SlowSteps",
    )
    proc = start_search(args, tmp_path / "first.log")
    deadline = time.monotonic() + 240
    done: list = []
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if (
            (sweep / "optuna.db").exists()
            or (sweep / "study.log").exists()
            or storage == "postgresql"
        ):
            try:
                trials = study_of(sweep, url, name).get_trials()
            except KeyError:  # the database is there, the study not yet
                continue
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            if len(done) >= 1 and any(t.state == TrialState.RUNNING for t in trials):
                break
    assert proc.poll() is None and done, (tmp_path / "first.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its running trial, at once
    proc.wait()
    kept = {
        t.number: t.params
        for t in study_of(sweep, url, name).get_trials()
        if t.state == TrialState.COMPLETE
    }

    again = run_module(*args, env=ONE_THREAD)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    study = study_of(sweep, url, name)
    ended = finished(study)
    assert len(ended) == 4  # exactly n_trials finished trials
    assert all(study.trials[n].params == p for n, p in kept.items())  # nothing lost or rerun
    assert distinct_params(ended)  # no parameter set ran twice
    killed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert len(killed) >= 1  # the trial running at the kill, marked failed via its heartbeat
    assert max(t.number for t in ended) > max(t.number for t in killed)  # numbering went on
    records = [sweep / str(t.number) / "metrics.json" for t in killed]
    for path in (p for p in records if p.is_file()):  # the kill may land before it wrote one
        record = json.loads(path.read_text())
        assert record["status"] == "interrupted" and "heartbeat" in record["error"]
    if any(p.is_file() for p in records):
        assert "| failed |" in (sweep / "results.md").read_text()  # its state in the report


@pytest.mark.e2e
def test_jobs_that_outlive_their_sweep_keep_their_trials_and_tell_them(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """Issue 26, item 5: a sweep's own heartbeats kept its trials alive, so when the sweep
    died and its jobs ran on (SLURM jobs; here submitit's local processes), the command run
    again failed their trials as stale and ran replacements, while the jobs crashed at their
    next report. The job now beats and tells its own trial: the second sweep waits for them."""
    sweep = tmp_path / "sweep"
    args = search(
        synthetic_root,
        sweep,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.pruner=none",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        "+callbacks.slow._target_=tests.helpers.SlowSteps",
        "+callbacks.slow.seconds=0.8",
    )
    proc = start_search(args, tmp_path / "first.log")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        started = [sweep / j / "metrics.json" for j in ("0", "1")]
        if all(p.is_file() for p in started):
            break
    assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)  # the sweep alone: its jobs run on
    proc.wait()
    time.sleep(3)  # longer than the grace period: only the jobs' own beats keep them alive

    again = run_module(*args, env=ONE_THREAD, timeout=240)
    out = again.stdout + again.stderr
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
    workers = [
        start_search(
            search(
                synthetic_root,
                tmp_path / f"w{i}",
                "hydra.sweeper.n_trials=5",
                "hydra.sweeper.pruner=none",
                f"hydra.sweeper.storage={url}",
                f"hydra.sweeper.study_name={name}",
            ),
            tmp_path / f"w{i}.log",
        )
        for i in range(2)
    ]
    for w in workers:
        assert w.wait(timeout=300) == 0
    study = study_of(tmp_path, url, name)
    ended = finished(study)
    assert len(ended) == 5 and distinct_params(ended)
    run_dirs = [
        p.parent.name for i in range(2) for p in (tmp_path / f"w{i}").glob("*/metrics.json")
    ]
    assert sorted(run_dirs, key=int) == sorted(str(t.number) for t in ended)  # each ran once
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    assert all(f"Optuna study '{name}'" in text for text in logs)
    # One created the study, the other joined it and drew its own stream (issue 26, item 9):
    # started together with one seed, they proposed the same settings, closed unrun.
    assert sorted("(new)" in text for text in logs) == [False, True]
    repeats = [k for k, v in study.user_attrs.items() if v == "repeat of an earlier trial"]
    assert not repeats, repeats


@pytest.mark.e2e
def test_a_lost_job_fails_its_trial_and_the_search_goes_on(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """Issue 26, item 3: a job that ends without a result (here SIGKILLed, as by the OOM
    killer) made submitit's launcher raise for its whole batch; the sweep died, the batch's
    other trials stayed RUNNING and their results were never told."""
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
    states = {t.number: t.state for t in study_of(sweep).get_trials()}
    # The lost job's trial failed once its heartbeat went stale; its batch mate, which the
    # launcher's error left running, told its own result.
    assert states[0] == TrialState.FAIL and states[1] == TrialState.COMPLETE
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 3
    assert json.loads((sweep / "1" / "metrics.json").read_text())["status"] == "completed"
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "interrupted"
