"""How many jobs the sweep's loop (``OptunaSweeperImpl._loop``) keeps in flight, in-process:
a fake launcher stands in for the jobs (the real launchers run in test_search_*.py) and
records, at the start of each launch, which trials it launched, how many jobs were inside a
launch then and how many of the sweep's slots orphans held.

The loop's accounting: of ``n_jobs`` slots, each job launched and not yet collected holds
one, and so does each orphan (a trial whose launch raised while its job may still run) until
its trial ends; of the ``n_trials`` places of the study, each running trial holds one, this
sweep's or another sweep's."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from hydra_plugins.seqmnist_optuna_sweeper._impl import Heartbeats, OptunaSweeperImpl
from seqmnist.core.internals import optuna_trial_id
from seqmnist.core.rundir import RunDir
from seqmnist.jobs.search import record_heartbeat
from tests.hydra_plugins.test_optuna_sweeper import sweeper_of

CONTINUOUS = {"dropout": FloatDistribution(0.0, 0.5)}  # never exhausted
RESULT = {"status": "completed", "optimized_metric": "val/acc_best", "val/acc_best": 0.5}


class UncompletedJobError(RuntimeError):
    """What submitit's launcher raises for a launch with a job that ended without a result."""


@dataclass
class Launch:
    trials: list[int]
    jobs: int  # jobs inside a launch as this one started, its own included
    orphans: int  # slots the sweep's orphans held then
    at: float  # time.monotonic() at its start


class Jobs:
    """A launcher whose job for each trial does what ``fates`` says (by trial number; by
    default ``complete``):

    - ``complete``: runs ``seconds``, writes its ``metrics.json`` and returns;
    - ``lost``: dies at once without a result (its ``metrics.json`` says running), and the
      launch raises, as submitit's does for a batch with such a job;
    - ``runs on``: the launch raises at once (the launcher lost track of it) but the job runs
      on for ``runs_on`` seconds, beating its trial, then tells the study its result itself.

    ``seconds`` may be a list: the durations of the ``complete`` jobs in launch order."""

    def __init__(
        self,
        sweeper: OptunaSweeperImpl,
        study: optuna.Study,
        fates: dict[int, str] | None = None,
        seconds: float | list[float] = 1.0,
        runs_on: float = 6.0,
    ) -> None:
        self.sweeper, self.study = sweeper, study
        self.fates = fates or {}
        self.seconds, self.runs_on = seconds, runs_on
        self.lock = threading.Lock()
        self.inside = 0
        self.launches: list[Launch] = []
        self.ended: dict[int, float] = {}  # trial number -> when its job ended
        self.outliving: list[threading.Thread] = []

    @property
    def launched(self) -> list[int]:
        return sorted(n for launch in self.launches for n in launch.trials)

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        jobs = [
            {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides}
            for overrides in job_overrides
        ]
        numbers = [int(job["hydra.sweep.subdir"]) for job in jobs]
        with self.lock:
            self.inside += len(numbers)
            done = sum(len(launch.trials) for launch in self.launches)
            self.launches.append(
                Launch(numbers, self.inside, len(self.sweeper.orphans), time.monotonic())
            )
        try:
            for job, number in zip(jobs, numbers, strict=True):
                run = RunDir(self.sweeper.sweep_dir / str(number))
                run.write_metrics({"status": "running"})
                if self.fates.get(number) == "runs on":
                    outliving = threading.Thread(
                        target=self._run_on, args=(number, int(job["optuna_trial.trial_id"]))
                    )
                    outliving.start()
                    self.outliving.append(outliving)
            if any(self.fates.get(n) in ("lost", "runs on") for n in numbers):
                raise UncompletedJobError(f"job {numbers[0]} ended without a result")
            seconds = self.seconds
            time.sleep(seconds[done % len(seconds)] if isinstance(seconds, list) else seconds)
            returns = []
            for number in numbers:
                RunDir(self.sweeper.sweep_dir / str(number)).write_metrics(RESULT)
                ret = JobReturn()
                ret.status, ret.return_value = JobStatus.COMPLETED, 0.5
                returns.append(ret)
                self.ended[number] = time.monotonic()
            return returns
        finally:
            with self.lock:
                self.inside -= len(numbers)

    def _run_on(self, number: int, trial_id: int) -> None:
        """The job the launcher lost track of: it beats its trial, then tells its result."""
        until = time.monotonic() + self.runs_on
        while time.monotonic() < until:
            record_heartbeat(self.study._storage, trial_id)
            time.sleep(0.3)
        RunDir(self.sweeper.sweep_dir / str(number)).write_metrics(RESULT)
        self.study.tell(number, 0.5)
        self.ended[number] = time.monotonic()

    def check_slots(self, n_jobs: int) -> None:
        """No launch started with more jobs inside launches than the slots orphans left."""
        over = [launch for launch in self.launches if launch.jobs + launch.orphans > n_jobs]
        assert not over, f"more than n_jobs={n_jobs} slots taken: {over}"


def run_loop(
    sweeper: OptunaSweeperImpl,
    study: optuna.Study,
    space: dict[str, BaseDistribution],
    apart: bool,
    grace: int = 2,
    seconds: float = 60,
) -> float:
    """The sweep's loop, which must end by itself within ``seconds`` (else the test fails
    and the loop is told to stop); when it returned (time.monotonic())."""
    plan = {"space": space, "fixed": {}, "url": "u"}
    with Heartbeats(study._storage, 1, grace) as beats:
        thread = threading.Thread(
            target=sweeper._loop, args=(study, plan, beats, apart), daemon=True
        )
        thread.start()
        thread.join(seconds)
        returned = time.monotonic()
        if thread.is_alive():
            sweeper.ended = "stopped by the test"
            thread.join(10)
            pytest.fail(f"the search did not end within {seconds} s")
    return returned


def new_study() -> optuna.Study:
    storage = optuna.storages.InMemoryStorage()
    return optuna.create_study(storage=storage, direction="maximize")


def states(study: optuna.Study) -> dict[int, TrialState]:
    return {t.number: t.state for t in study.get_trials(deepcopy=False)}


@pytest.mark.parametrize("fate", ["lost", "runs on"])
def test_an_orphan_holds_one_slot_until_its_trial_ends(tmp_path: Path, fate: str) -> None:
    """Trial 0's launch raises at once: its job is lost (it fails once its heartbeat goes
    stale) or runs on and tells its own result. Until then it holds one of the two slots:
    the other trials run one at a time, then two at a time."""
    sweeper = sweeper_of(sampler="random", n_trials=8, n_jobs=2, max_failures=5)
    sweeper.sweep_dir = tmp_path
    study = new_study()
    jobs = Jobs(sweeper, study, {0: fate}, seconds=1.0, runs_on=2.5)
    sweeper.launcher = jobs
    run_loop(sweeper, study, CONTINUOUS, apart=True)
    for outliving in jobs.outliving:
        outliving.join(10)

    jobs.check_slots(n_jobs=2)
    held = [launch for launch in jobs.launches if launch.orphans == 1]
    assert held and all(launch.jobs == 1 for launch in held), jobs.launches
    # Once the orphan's trial ended, its slot was the sweep's again: two at a time.
    freed = [launch for launch in jobs.launches if launch.at > held[-1].at and launch.jobs == 2]
    assert freed and all(launch.orphans == 0 for launch in freed), jobs.launches
    assert not sweeper.orphans
    if fate == "lost":  # 0 failed; 1 to 8 make the 8 finished trials
        assert jobs.launched == list(range(9))
        assert states(study) == {
            0: TrialState.FAIL,
            **{n: TrialState.COMPLETE for n in range(1, 9)},
        }
        assert list(sweeper.lost) == [0] and len(sweeper.failures) == 1
        assert "its job was lost (UncompletedJobError: job 0 ended" in sweeper.failures[0]
    else:  # its job told its result: not a failure
        assert jobs.launched == list(range(8))
        assert states(study) == {n: TrialState.COMPLETE for n in range(8)}
        assert not sweeper.lost and not sweeper.failures


def test_a_batch_mate_left_running_by_its_launcher_tells_its_own_result(tmp_path: Path) -> None:
    """Jobs launched as one batch (``apart=False``: Hydra's launcher interface): job 0 is lost
    and the launch raises for the batch while job 1 still runs. Both trials are orphans and
    hold both slots, so nothing is launched until the stale check fails trial 0; trial 1's
    job runs on, tells its own result and is no failure of the search."""
    sweeper = sweeper_of(sampler="random", n_trials=4, n_jobs=2, max_failures=5)
    sweeper.sweep_dir = tmp_path
    study = new_study()
    jobs = Jobs(sweeper, study, {0: "lost", 1: "runs on"}, seconds=1.0, runs_on=6.0)
    sweeper.launcher = jobs
    run_loop(sweeper, study, CONTINUOUS, apart=False)
    for outliving in jobs.outliving:
        outliving.join(10)

    jobs.check_slots(n_jobs=2)
    first, second, *rest = jobs.launches
    assert first.trials == [0, 1]
    # Trial 0 failed stale; trial 1's job still ran: one slot for the next batch.
    assert (second.trials, second.jobs, second.orphans) == ([2], 1, 1), jobs.launches
    assert second.at < jobs.ended[1]
    assert jobs.launched == [0, 1, 2, 3, 4]
    assert states(study) == {0: TrialState.FAIL, **{n: TrialState.COMPLETE for n in range(1, 5)}}
    assert list(sweeper.lost) == [0] and len(sweeper.failures) == 1
    assert sweeper.failures[0].startswith("trial 0: its job was lost")


def test_the_trials_of_another_sweep_take_places_of_the_study_not_slots(tmp_path: Path) -> None:
    """Another sweep runs trials 0 and 1 of the shared study (n_trials=4): this one, with
    three slots, runs only the two places left; when the other sweep's trial 1 fails, its
    place is free again and this sweep runs a third trial."""
    sweeper = sweeper_of(sampler="random", n_trials=4, n_jobs=3, max_failures=5)
    sweeper.sweep_dir = tmp_path
    study = new_study()
    others = [study.ask(CONTINUOUS) for _ in range(2)]
    jobs = Jobs(sweeper, study, seconds=1.0)
    sweeper.launcher = jobs
    told_at: list[float] = []

    def other_sweep() -> None:
        # Its trials stay alive (its own heartbeats) until this sweep's two have ended and
        # it has waited through a few of its loop's turns (one a second).
        with Heartbeats(study._storage, 1, 30) as beats:
            for trial in others:
                beats.add(optuna_trial_id(trial))
            deadline = time.monotonic() + 30
            while len(jobs.ended) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(3)
            told_at.append(time.monotonic())
            study.tell(others[0], 0.5)
            study.tell(others[1], state=TrialState.FAIL)

    other = threading.Thread(target=other_sweep, daemon=True)
    other.start()
    run_loop(sweeper, study, CONTINUOUS, apart=True, grace=5)
    other.join(10)

    jobs.check_slots(n_jobs=3)
    assert jobs.launched == [2, 3, 4], jobs.launches
    assert max(launch.jobs for launch in jobs.launches) == 2  # the two places, not 3 slots
    (last,) = [launch for launch in jobs.launches if launch.trials == [4]]
    assert told_at and last.at > told_at[0]  # launched once the failed trial's place was free
    assert states(study) == {
        0: TrialState.COMPLETE,
        1: TrialState.FAIL,
        **{n: TrialState.COMPLETE for n in (2, 3, 4)},
    }
    assert not sweeper.failures  # the other sweep's failure is not this one's


def test_a_space_exhausted_while_trials_run_waits_for_them(tmp_path: Path) -> None:
    """Three settings, n_trials=10: the third is asked while the second still runs; when a
    slot frees after that, the space has nothing new. The search ends (no more launches),
    but only once the trials it launched have ended."""
    sweeper = sweeper_of(sampler="random", n_trials=10, n_jobs=2, max_failures=5)
    sweeper.sweep_dir = tmp_path
    study = new_study()
    space = {"x": CategoricalDistribution([1, 2, 3])}
    jobs = Jobs(sweeper, study, seconds=[0.5, 4.0, 1.0])  # the second runs longest
    sweeper.launcher = jobs
    returned = run_loop(sweeper, study, space, apart=True)

    jobs.check_slots(n_jobs=2)
    assert len(jobs.launches) == 3  # one per setting, none after the space ran out
    setting = {t.number: t.params["x"] for t in study.get_trials()}
    assert sorted(setting[n] for n in jobs.launched) == [1, 2, 3]
    assert sweeper.ended is not None
    assert sweeper.ended.startswith("the search space holds 3 settings and all have run")
    # Said while the second trial still ran: the count says so rather than undercounting.
    assert "(2 finished trials and 1 still running of hydra.sweeper.n_trials=10)" in (
        sweeper.ended
    ), sweeper.ended
    assert all(states(study)[n] == TrialState.COMPLETE for n in jobs.launched)
    assert returned >= max(jobs.ended.values())  # it waited for the longest job
    assert not sweeper.failures
