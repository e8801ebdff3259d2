"""When a search ends for its failures, in-process: a fake launcher stands in for the jobs
(the real launchers run in test_search_*.py), so each case takes a few seconds."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from hydra_plugins.seqmnist_optuna_sweeper._impl import Heartbeats, OptunaSweeperImpl
from seqmnist.core.rundir import RunDir
from seqmnist.reports.sweep_callback import SweepSummary
from tests.hydra_plugins.test_optuna_sweeper import sweeper_of

SPACE = {"dropout": FloatDistribution(0.0, 0.5)}  # continuous: never exhausted
PLAN = {"space": SPACE, "fixed": {}, "url": "u"}


class UncompletedJobError(RuntimeError):
    """What submitit's launcher raises for a batch with a job that ended without a result."""


class JobsThatDie:
    """A launcher whose every job starts (its directory, ``metrics.json`` saying running, as
    a real job writes them) and dies without a result (OOM, a lost node): the launch raises."""

    def __init__(self, sweep_dir: Path) -> None:
        self.sweep_dir = sweep_dir
        self.launched: list[int] = []

    def launch(self, job_overrides, initial_job_idx):
        for overrides in job_overrides:
            subdir = next(o.split("=", 1)[1] for o in overrides if "sweep.subdir=" in o)
            (self.sweep_dir / subdir / ".hydra").mkdir(parents=True)
            RunDir(self.sweep_dir / subdir).write_metrics({"status": "running"})
            self.launched.append(int(subdir))
        raise UncompletedJobError(f"job {initial_job_idx} ended without a result (OUT_OF_MEMORY)")


def loop_at_most(
    sweeper: OptunaSweeperImpl, study: optuna.Study, storage: Any, apart: bool, seconds: float
) -> None:
    """The sweep's loop, which must end by itself within ``seconds``; past that the test
    fails (and the loop is told to stop) rather than hanging."""
    # A grace period of one second: a lost job's trial goes stale in about a second.
    with Heartbeats(storage, 1, 1) as beats:
        thread = threading.Thread(
            target=sweeper._loop, args=(study, PLAN, beats, apart), daemon=True
        )
        thread.start()
        thread.join(seconds)
        if thread.is_alive():
            sweeper.ended = "stopped by the test"
            thread.join(10)
            pytest.fail(f"the search did not end within {seconds} s: it asks trials forever")


@pytest.mark.parametrize("apart", [True, False], ids=["from-threads", "in-batches"])
def test_jobs_that_always_die_end_the_search_after_max_failures(
    tmp_path: Path, apart: bool
) -> None:
    """A lost job's trial is left running for its job to tell, and failed by the stale check
    once its heartbeat stops: that failure was counted nowhere, so a search whose jobs
    always died (OOM every time) asked for trials forever. One job at a time, so the count
    is exact (jobs in flight together may all fail past max_failures)."""
    sweeper = sweeper_of(sampler="random", n_trials=5, n_jobs=1, max_failures=2)
    launcher = JobsThatDie(tmp_path)
    sweeper.launcher, sweeper.sweep_dir = launcher, tmp_path
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, direction="maximize")
    loop_at_most(sweeper, study, storage, apart, seconds=20)
    assert launcher.launched == [0, 1]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL] * 2
    assert len(sweeper.failures) == 2  # each once
    assert sweeper.ended is not None
    assert sweeper.ended.startswith(
        "2 trials failed (hydra.sweeper.max_failures=2); the first: trial "
    )
    assert "its job was lost (UncompletedJobError: job " in sweeper.ended
    # The sweep's report exits 1, as for any search ended by its failures.
    sweeper._mark_dead_jobs(study.get_trials())
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(SystemExit) as exit_:
        SweepSummary().on_multirun_end(config)
    assert exit_.value.code == 1
    assert RunDir(tmp_path / "0").read_metrics()["status"] == "failed"


@pytest.mark.parametrize(
    ("held", "counted"),
    [
        (TrialState.COMPLETE, 0),  # its job told its result, then failed (in teardown, say)
        (TrialState.PRUNED, 0),
        (TrialState.FAIL, 1),  # failed by a stale check elsewhere: it ended FAIL all the same
        (TrialState.RUNNING, 1),  # told FAIL here
    ],
)
def test_a_failed_job_counts_only_when_its_trial_ends_failed(
    tmp_path: Path, held: TrialState, counted: int
) -> None:
    """A job that told its trial's result and failed after (its teardown raised) made the
    sweep count a failure for a trial the study holds complete: the search could end early
    and exit 1 for trials that all finished."""
    sweeper = sweeper_of(max_failures=1)
    sweeper.sweep_dir = tmp_path
    study = optuna.create_study(direction="maximize")
    trial = study.ask(SPACE)
    if held == TrialState.COMPLETE:
        study.tell(trial.number, 0.5)  # the job's own tell
    elif held != TrialState.RUNNING:
        study.tell(trial.number, state=held)
    RunDir(tmp_path / str(trial.number)).write_metrics(
        {"status": "failed", "error": "RuntimeError: in teardown", "val/acc_best": 0.5}
    )
    ret = JobReturn()
    ret.status, ret.return_value = JobStatus.FAILED, RuntimeError("in teardown")
    sweeper._tell(study, trial, ret)
    assert study.get_trials()[0].state == (TrialState.FAIL if held == TrialState.RUNNING else held)
    assert len(sweeper.failures) == counted
