"""A trial whose SLURM job requeued itself waits in the queue without a heartbeat (SLURM
holds a requeued job back for at least its cred_expire, 120 s by default, the same as the
default grace period): the stale check keeps it while SLURM still holds the job, and fails
it once SLURM no longer knows the job."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest

from hydra_plugins.seqmnist_optuna_sweeper._impl import Heartbeats
from seqmnist.core.internals import optuna_trial_id
from seqmnist.jobs.search import HEARTBEAT_ATTR, REQUEUED_ATTR, open_storage
from tests.helpers import fake_command

GRACE = 120  # the sweeper's default grace period


@pytest.fixture
def squeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in ``squeue`` on PATH that prints the file it returns (``<id> <state>`` lines),
    or fails as SLURM does for ids it no longer knows when the file is missing."""
    answer = tmp_path / "squeue_says"
    fake_command(
        monkeypatch,
        tmp_path / "bin",
        "squeue",
        f"if [ -f {answer} ]; then cat {answer}; exit 0; fi\n"
        'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1',
    )
    return answer


def stale_trial(study: optuna.Study, requeued_as: str | None) -> optuna.trial.Trial:
    """A running trial whose last beat is 130 s old: past the grace period."""
    trial = study.ask()
    storage = study._storage
    storage.set_trial_system_attr(optuna_trial_id(trial), HEARTBEAT_ATTR, time.time() - 130)
    if requeued_as is not None:
        storage.set_trial_system_attr(optuna_trial_id(trial), REQUEUED_ATTR, requeued_as)
    return trial


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def test_a_requeued_trial_is_kept_while_slurm_holds_its_job(tmp_path: Path, squeue: Path) -> None:
    storage = open_storage(str(tmp_path / "study.log"))
    study = optuna.create_study(storage=storage, study_name="gap")
    waiting = stale_trial(study, "77_1")  # requeued, pending in the queue
    lost = stale_trial(study, None)  # an ordinary trial whose job went silent
    squeue.write_text("77_1 PENDING\n")
    beats = Heartbeats(storage, interval=30, grace_period=GRACE)
    beats.fail_stale(study)
    assert states(study) == ["RUNNING", "FAIL"]
    beat = storage.get_trial(optuna_trial_id(waiting)).system_attrs[HEARTBEAT_ATTR]
    assert time.time() - beat < 5  # kept alive for the next check too
    assert lost.number == 1

    squeue.write_text("77_1 RUNNING\n")  # started again: its run beats itself from now on
    beats.fail_stale(study)
    assert states(study) == ["RUNNING", "FAIL"]


def test_a_requeued_trial_whose_job_slurm_no_longer_knows_is_failed(
    tmp_path: Path, squeue: Path
) -> None:
    storage = open_storage(str(tmp_path / "study.log"))
    study = optuna.create_study(storage=storage, study_name="gap")
    stale_trial(study, "77_1")
    Heartbeats(storage, interval=30, grace_period=GRACE).fail_stale(study)  # squeue: unknown
    assert states(study) == ["FAIL"]
