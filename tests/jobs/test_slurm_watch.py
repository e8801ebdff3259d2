"""A sweep on SLURM whose accounting (slurmdbd, asked through ``sacct``) stops answering: it
waits a bounded time for its jobs, then ends with one message, not forever.

No cluster needed: SLURM's commands are fakes on PATH (the real cluster's slurmdbd is never
touched); ``sacct`` fails as SLURM 22.05's does when slurmdbd is down.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from submitit.core.utils import UncompletedJobError, cloudpickle_dump
from submitit.slurm.slurm import SlurmJob

from seqmnist.jobs.preflight import SlurmPreflight
from seqmnist.jobs.resolvers import register_resolvers
from seqmnist.jobs.slurm_watch import sacct_timeout_s
from tests.cluster import SLURM
from tests.helpers import CONFIG_DIR, ONE_THREAD, run_module, run_sweep, write_command
from tests.hydra_plugins.searches import search

# What sacct 22.05 says (exit status 1, nothing on stdout) when slurmdbd is not there: sacct
# against a copy of the local cluster's slurm.conf whose AccountingStoragePort is closed.
DBD_DOWN = (
    "sacct: error: slurm_persist_conn_open_without_init: failed to open persistent connection "
    "to host:127.0.0.1:16820: Connection refused\n"
    "sacct: error: Sending PersistInit msg: Connection refused\n"
    "sacct: error: Problem talking to the database: Connection refused\n"
)

# The job every test waits for: SLURM took it, then it was lost (killed: no result pickle).
JOB = "4242"


def fake_slurm(
    folder: Path, sacct_answers_after: int | None = None, sacct_says: str = DBD_DOWN
) -> Path:
    """SLURM's commands as a sweep uses them, for a cluster whose controller answers and
    whose slurmdbd is down: ``sbatch`` takes each job (and never runs it), ``scontrol ping``
    and ``sinfo`` answer (the preflight), ``sacct`` fails saying ``sacct_says``. With
    ``sacct_answers_after=N`` it fails N times, then says the job FAILED (slurmdbd back).
    Returns the folder for PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    answer = (
        f'[ "$n" -gt {sacct_answers_after} ] && {{ printf "JobID|State|NodeList\\n'
        f'{JOB}|FAILED|n1\\n"; exit 0; }}\n'
        if sacct_answers_after is not None
        else ""
    )
    scripts = {
        "sacct": (
            f'n=$(( $(cat "{folder}/sacct.calls" 2>/dev/null || echo 0) + 1 ))\n'
            f'echo "$n" > "{folder}/sacct.calls"\n'
            f"{answer}"
            f"printf '%s' '{sacct_says}' >&2\nexit 1\n"
        ),
        "sbatch": (
            f'n=$(( $(cat "{folder}/sbatch.calls" 2>/dev/null || echo 0) + 1 ))\n'
            f'echo "$n" > "{folder}/sbatch.calls"\n'
            f'echo "Submitted batch job $(( {JOB} + n - 1 ))"\n'
        ),
        "scontrol": 'echo "Slurmctld(primary) at vm is UP"\n',
        "sinfo": 'printf "n1 1 6026 debug*\\nn2 1 6026 debug*\\n"\n',
    }
    for name, body in scripts.items():
        write_command(folder, name, body)
    return folder


def lost_job(sweep: Path, job_id: str) -> SlurmJob:
    """A job as the launcher holds it once sbatch took it: its submitit folder, no result."""
    job: SlurmJob = SlurmJob(folder=sweep / ".submitit" / "%j", job_id=job_id)
    job.paths.folder.mkdir(parents=True, exist_ok=True)
    return job


def sweep_config(sweep: Path) -> DictConfig:
    """The config a multirun with ``hydra/launcher=slurm`` starts with (Hydra's node kept)."""
    register_resolvers()  # as the commands do
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=[*SLURM, f"hydra.sweep.dir={sweep}"],
            return_hydra_config=True,
        )


def waited(job: SlurmJob, limit: float) -> tuple[BaseException | None, float]:
    """What ``job.result()`` (the SLURM launcher's wait) raised, and after how many seconds.
    Still waiting after ``limit`` s fails the test; the waiting thread is then let go (a
    result appears), so that it does not poll on through the tests after this one."""
    outcome: concurrent.futures.Future = concurrent.futures.Future()

    def wait() -> None:
        try:
            job.result()
            outcome.set_result(None)
        except BaseException as e:  # SystemExit included: what the sweep's thread would see
            outcome.set_result(e)

    start = time.monotonic()
    threading.Thread(target=wait, daemon=True).start()
    try:
        raised = outcome.result(timeout=limit)
    except concurrent.futures.TimeoutError:
        cloudpickle_dump(("success", None), job.paths.result_pickle)
        pytest.fail(
            f"the sweep still waits for job {job.job_id} after {limit:.0f} s of sacct failing "
            "(submitit takes the UNKNOWN state of a job it cannot ask about for not done)"
        )
    return raised, time.monotonic() - start


@pytest.fixture
def slurm_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Puts fake SLURM commands first on PATH (``fake_slurm``'s arguments); submitit's
    watcher of SLURM jobs, which the sweep replaces, is restored after the test."""
    monkeypatch.setattr(SlurmJob, "watcher", SlurmJob.watcher)
    monkeypatch.delenv("SLURM_CONF", raising=False)

    def make(**kwargs: Any) -> Path:
        folder = fake_slurm(tmp_path / "bin", **kwargs)
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
        return folder

    return make


def test_a_job_lost_while_sacct_fails_ends_the_sweep_with_one_message(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    slurm_down: Callable[..., Path],
) -> None:
    slurm_down()
    monkeypatch.setenv("SEQMNIST_SACCT_TIMEOUT_S", "2")
    sweep = tmp_path / "sweep"
    run_dir = sweep / "0"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text('{"status": "running"}')

    SlurmPreflight().on_multirun_start(sweep_config(sweep))  # as Hydra calls it
    job = lost_job(sweep, f"{JOB}_0")
    with caplog.at_level(logging.ERROR):
        raised, seconds = waited(job, limit=30)

    assert isinstance(raised, SystemExit) and raised.code == 2, raised
    assert seconds < 20
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors  # one message, also when more threads wait
    message = errors[0]
    for needle in (
        "sacct",
        "Problem talking to the database",  # sacct's own words
        "slurmdbd",
        "make cluster-up",
        f"sacct -j {JOB}",
        str(sweep),
        "SEQMNIST_SACCT_TIMEOUT_S",
    ):
        assert needle in message, (needle, message)
    assert (run_dir / "metrics.json").is_file()  # nothing of the sweep is removed


@pytest.mark.slow  # waits through submitit's polling, several seconds
def test_sacct_failing_for_less_than_the_bound_is_waited_through(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    slurm_down: Callable[..., Path],
) -> None:
    """slurmdbd back before the bound: the sweep goes on, and the lost job is one failed job
    (submitit's UncompletedJobError, which the launcher reports as before)."""
    slurm_down(sacct_answers_after=2)
    monkeypatch.setenv("SEQMNIST_SACCT_TIMEOUT_S", "60")
    monkeypatch.setattr(SlurmJob, "_results_timeout_s", 1)  # how long a result is looked for
    sweep = tmp_path / "sweep"
    SlurmPreflight().on_multirun_start(sweep_config(sweep))
    job = lost_job(sweep, JOB)
    with caplog.at_level(logging.ERROR):
        raised, _ = waited(job, limit=45)
    assert isinstance(raised, UncompletedJobError), raised
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.slow  # waits through submitit's polling, several seconds
def test_a_cluster_without_accounting_is_waited_on_as_before(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    slurm_down: Callable[..., Path],
) -> None:
    """No slurmdbd to come back (AccountingStorageType=accounting_storage/none): ending the
    sweep would end ones whose jobs run well. One warning, and submitit's wait."""
    slurm_down(sacct_says="Slurm accounting storage is disabled\n")
    monkeypatch.setenv("SEQMNIST_SACCT_TIMEOUT_S", "1")
    sweep = tmp_path / "sweep"
    SlurmPreflight().on_multirun_start(sweep_config(sweep))
    job = lost_job(sweep, JOB)
    waiting = threading.Thread(target=job.result, daemon=True)
    with caplog.at_level(logging.WARNING, "seqmnist.slurm"):
        waiting.start()
        try:
            deadline = time.monotonic() + 30
            while "accounting storage is disabled" not in caplog.text:
                assert time.monotonic() < deadline, "no warning within 30 s"
                time.sleep(0.2)
            time.sleep(3)  # past the bound, more than once
            assert waiting.is_alive()
        finally:  # the job ends well: the wait ends, whatever the test found
            cloudpickle_dump(("success", None), job.paths.result_pickle)
            waiting.join(timeout=20)
    assert not waiting.is_alive()
    ours = [r for r in caplog.records if r.name == "seqmnist.slurm"]
    assert [r.levelno for r in ours] == [logging.WARNING], caplog.text


@pytest.mark.parametrize(("given", "bound"), [("", 300.0), ("0", None), ("90", 90.0)])
def test_the_bound_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, given: str, bound: float | None
) -> None:
    monkeypatch.setenv("SEQMNIST_SACCT_TIMEOUT_S", given)
    assert sacct_timeout_s() == bound


def test_a_bad_bound_is_refused_before_the_sweep(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    slurm_down: Callable[..., Path],
) -> None:
    slurm_down()
    monkeypatch.setenv("SEQMNIST_SACCT_TIMEOUT_S", "5min")
    with pytest.raises(SystemExit) as stop, caplog.at_level(logging.ERROR):
        SlurmPreflight().on_multirun_start(sweep_config(tmp_path / "sweep"))
    assert stop.value.code == 2
    assert "SEQMNIST_SACCT_TIMEOUT_S='5min'" in caplog.text


# -- e2e: as a user runs a sweep -------------------------------------------------------------
def assert_one_message(proc: Any, sweep: Path) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert out.count("SLURM's accounting (sacct)") == 1, out[-3000:]
    assert "make cluster-up" in out and "Traceback" not in out, out[-3000:]
    assert list((sweep / ".submitit").glob("*/*_submitted.pkl"))  # what submitit wrote stays


@pytest.mark.e2e
def test_a_multirun_on_slurm_stops_waiting_when_sacct_keeps_failing(
    synthetic_root: Path, tmp_path: Path
) -> None:
    bin_dir = fake_slurm(tmp_path / "bin")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SEQMNIST_SACCT_TIMEOUT_S": "2"}
    sweep = tmp_path / "sweep"
    proc = run_sweep(
        *SLURM, "cell=lstm,gru", root=synthetic_root, sweep_dir=sweep, env=env, timeout=120
    )
    assert_one_message(proc, sweep)


@pytest.mark.e2e
def test_an_optuna_search_on_slurm_stops_waiting_when_sacct_keeps_failing(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """Two trials in flight, each waited for in a thread of its own."""
    bin_dir = fake_slurm(tmp_path / "bin")
    env = {
        **ONE_THREAD,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SEQMNIST_SACCT_TIMEOUT_S": "2",
    }
    sweep = tmp_path / "sweep"
    args = search(
        synthetic_root, sweep, *SLURM, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2"
    )
    proc = run_module(*args, env=env, timeout=120)
    assert_one_message(proc, sweep)
