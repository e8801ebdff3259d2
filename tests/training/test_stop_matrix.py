"""A stop at every point of a run, then a resume: the run ends as if never stopped.

A real signal (SIGTERM, or the SLURM time-limit SIGUSR2 with a stand-in ``scontrol`` on
PATH, which requeues the job) is sent in-process at one point of a short run: the sanity
check, each kind of training batch, the first and last validation batch, between fit and
test, inside test, inside the report and after the run is done. The run is then continued
as a user (``resume=RUN_DIR``) or SLURM (the requeued job's next start) continues it, and
compared with the run never stopped: the figures of ``metrics.json``, the epoch
checkpoints, which checkpoint was tested, every value reported to the Optuna trial, and all
the weights.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from seqmnist.jobs.search import REQUEUED_ATTR, open_storage
from seqmnist.train import run
from seqmnist.training.lifecycle import Lifecycle, Phase
from tests.helpers import FAST, compose_config, fake_command, metrics_of

# Two epochs of 4 steps, 2 validation and 4 test batches, a sanity check of one batch,
# dropout (the RNG matters), a one-cycle schedule stepped every batch, and a last.ckpt every
# 3 steps (so a checkpoint lies mid-epoch as well).
RUN = [
    *(o for o in FAST if not o.startswith(("trainer.max_epochs", "trainer.num_sanity"))),
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.num_sanity_val_steps=1",
    "data.eval_batch_size=50",
    "layers=2",
    "dropout=0.3",
    "optimizer.lr=0.05",  # epoch 0 validates best (0.20), epoch 1 worse: a best to keep
    "scheduler=onecycle",
    "callbacks.resume_checkpoint.every_n_train_steps=3",
]
SAME = ["val/acc_best", "test/acc", "test/loss", "epochs", "params", "status"]
STOP_AT = "+callbacks.stop_at._target_=tests.helpers.StopAt"


def new_trial(storage: str) -> dict[str, Any]:
    """A trial of a fresh study in ``storage`` (a journal file: quicker to open than SQLite,
    and a storage searches use too), as the sweeper makes one for a job."""
    import optuna

    study = optuna.create_study(
        storage=open_storage(storage), study_name="matrix", direction="maximize"
    )
    trial = study.ask()
    return {"storage": storage, "trial_id": trial._trial_id, "number": trial.number}


def trial_args(trial: dict[str, Any]) -> list[str]:
    return [
        f"optuna_trial.storage={trial['storage']}",
        "optuna_trial.study_name=matrix",
        f"optuna_trial.trial_id={trial['trial_id']}",
        f"optuna_trial.number={trial['number']}",
    ]


def outcome(run_dir: Path, trial: dict[str, Any]) -> dict[str, Any]:
    """What a stopped-and-continued run must share with the run never stopped."""
    m = metrics_of(run_dir)
    ckpts = run_dir / "checkpoints"
    frozen = open_storage(trial["storage"]).get_trial(trial["trial_id"])
    return {
        **{k: m.get(k) for k in SAME},
        "checkpoints": sorted(p.name for p in ckpts.glob("*.ckpt")),
        "tested": Path(m["best_ckpt"]).name,
        "reported": dict(frozen.intermediate_values),
        "told": (frozen.state.name, frozen.value),
    }


def weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, weights_only=True)
    return {k: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}


def same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key, value in wa.items():
        assert torch.equal(value, wb[key]), key


def train(root: Path, run_dir: Path, *extra: str) -> int:
    args = [f"data.root={root}", *RUN, *extra]
    try:
        status, _ = run(compose_config(*args, run_dir=run_dir), args, multirun=False)
    except SystemExit as e:  # a requeued SLURM job exits without a result
        return int(e.code)
    return status


@pytest.fixture(scope="module")
def never_stopped(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    tmp = tmp_path_factory.mktemp("never_stopped")
    trial = new_trial(str(tmp / "optuna.log"))
    run_dir = tmp / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests run (a module fixture comes before one_thread)
    try:
        assert train(synthetic_root, run_dir, *trial_args(trial)) == 0
    finally:
        torch.set_num_threads(before)
    reference = outcome(run_dir, trial)
    # Its best epoch is the first: every stop after it checks that a resume keeps the best.
    assert (
        reference["tested"].startswith("epoch_000")
        and reference["reported"][1] < reference["reported"][0]
    )
    return run_dir, reference


@pytest.fixture
def slurm_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process as task 0 of a SLURM batch job, with a stand-in ``scontrol`` that
    records each call: the file it returns."""
    calls = tmp_path / "scontrol_calls"
    # Refuses, as a site with JobRequeue=0 would, when SCONTROL_REFUSES is set.
    fake_command(
        monkeypatch,
        tmp_path / "bin",
        "scontrol",
        f'echo "$@" >> {calls}\n'
        'if [ -n "$SCONTROL_REFUSES" ]; then echo "Requested operation is presently disabled '
        'for job" >&2; exit 1; fi',
    )
    for key, value in {
        "SLURM_JOB_ID": "4242",
        "SLURM_ARRAY_JOB_ID": "4242",
        "SLURM_ARRAY_TASK_ID": "0",
        "SLURM_PROCID": "0",
        "ENVIRONMENT": "BATCH",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    return calls


def stop_at(point: str, once: Path, **where: Any) -> list[str]:
    return [
        STOP_AT,
        f"+callbacks.stop_at.point={point}",
        f"+callbacks.stop_at.once={once}",
        *(f"+callbacks.stop_at.{k}={v}" for k, v in where.items()),
    ]


def signal_on_entering(monkeypatch: pytest.MonkeyPatch, phase: Phase, sig: int) -> None:
    """A signal as the run enters ``phase`` (between fit and test: ``Phase.TEST``), once."""
    enter = Lifecycle.enter
    sent: list[int] = []

    def entering(self: Lifecycle, new: Phase) -> None:
        enter(self, new)
        if new is phase and not sent:
            sent.append(sig)
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(Lifecycle, "enter", entering)


# The points of a run where a stop lands, and whether the run stops there (exit status) or
# finishes first (a stop once testing has begun: the run is complete, nothing to continue).
TRAINER_POINTS = {
    "sanity-check": ("sanity", {}),
    "first-batch": ("train", {"epoch": 0, "batch": 0}),
    "middle-batch": ("train", {"epoch": 0, "batch": 1}),
    "last-batch": ("train", {"epoch": 0, "batch": 3}),
    "next-epoch-first-batch": ("train", {"epoch": 1, "batch": 0}),
    "first-val-batch": ("val", {"epoch": 0, "batch": 0}),
    "last-val-batch": ("val", {"epoch": 0, "batch": 1}),
    "last-epoch-last-batch": ("train", {"epoch": 1, "batch": 3}),
    "last-epoch-val": ("val", {"epoch": 1, "batch": 1}),
}


@pytest.mark.parametrize("where", list(TRAINER_POINTS))
def test_sigterm_during_fit_then_resume_ends_as_if_never_stopped(
    synthetic_root: Path, tmp_path: Path, never_stopped: tuple, where: str
) -> None:
    reference_dir, reference = never_stopped
    trial = new_trial(str(tmp_path / "optuna.log"))
    run_dir = tmp_path / "run"
    point, at = TRAINER_POINTS[where]
    stop = stop_at(point, tmp_path / "sent", **at)
    status = train(synthetic_root, run_dir, *trial_args(trial), *stop)
    assert status == 143
    record = metrics_of(run_dir)
    assert record["status"] == "interrupted" and f"resume={run_dir}" in record["error"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    args = [f"resume={run_dir}"]
    assert run(compose_config(*args, run_dir=tmp_path / "inv"), args, multirun=False)[0] == 0
    assert outcome(run_dir, trial) == reference
    for name in ("last.ckpt", reference["tested"]):
        same_weights(run_dir / "checkpoints" / name, reference_dir / "checkpoints" / name)


@pytest.mark.parametrize("where", ["last-batch", "last-val-batch", "middle-batch"])
def test_the_slurm_time_limit_requeues_and_the_next_start_ends_as_if_never_stopped(
    synthetic_root: Path,
    tmp_path: Path,
    never_stopped: tuple,
    slurm_job: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    reference_dir, reference = never_stopped
    trial = new_trial(str(tmp_path / "optuna.log"))
    run_dir = tmp_path / "run"
    point, at = TRAINER_POINTS[where]
    args = [*trial_args(trial), *stop_at(point, tmp_path / "sent", sig=int(signal.SIGUSR2), **at)]
    assert train(synthetic_root, run_dir, *args) == 140
    assert slurm_job.read_text().split() == ["requeue", "4242_0"]
    assert metrics_of(run_dir)["status"] == "interrupted"
    # Its trial knows the job it waits as: a sweep's stale check asks SLURM before failing it.
    held = open_storage(trial["storage"]).get_trial(trial["trial_id"]).system_attrs
    assert held[REQUEUED_ATTR] == "4242_0"

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the job's next start: the same command
    assert train(synthetic_root, run_dir, *args) == 0
    assert outcome(run_dir, trial) == reference
    same_weights(run_dir / "checkpoints" / "last.ckpt", reference_dir / "checkpoints" / "last.ckpt")
    assert slurm_job.read_text().split() == ["requeue", "4242_0"]  # requeued once only


def test_a_requeue_slurm_refuses_leaves_the_run_interrupted_with_the_way_on(
    synthetic_root: Path, tmp_path: Path, slurm_job: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No silent success: the job returns (the sweep gets its record), the run says it was
    not requeued and how to continue."""
    monkeypatch.setenv("SCONTROL_REFUSES", "1")
    run_dir = tmp_path / "run"
    stop = stop_at("train", tmp_path / "sent", sig=int(signal.SIGUSR2), epoch=0, batch=1)
    assert train(synthetic_root, run_dir, *stop) == 140
    assert slurm_job.read_text().split() == ["requeue", "4242_0"]
    record = metrics_of(run_dir)
    assert record["status"] == "interrupted"
    assert "SLURM did not requeue the job" in record["error"]
    assert f"resume={run_dir}" in record["error"]


def test_a_task_other_than_the_first_leaves_the_requeue_to_it(
    synthetic_root: Path, tmp_path: Path, slurm_job: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It exits 0 (srun's KillOnBadExit would otherwise end the first task before it asks
    SLURM) with no result, and does not call scontrol itself."""
    monkeypatch.setenv("SLURM_PROCID", "1")
    stop = stop_at("train", tmp_path / "sent", sig=int(signal.SIGUSR2), epoch=0, batch=1)
    assert train(synthetic_root, tmp_path / "run", *stop) == 0
    assert not slurm_job.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2], ids=["SIGTERM", "SIGUSR2"])
@pytest.mark.parametrize("phase", [Phase.TEST, Phase.REPORT, Phase.DONE])
def test_a_stop_once_fit_is_over_lets_the_run_finish(
    synthetic_root: Path,
    tmp_path: Path,
    never_stopped: tuple,
    slurm_job: Path,
    monkeypatch: pytest.MonkeyPatch,
    phase: Phase,
    sig: int,
) -> None:
    """Between fit and test, inside the test, the report or once done: the run completes,
    exits 0 and is never requeued (a finished job must not run again)."""
    _, reference = never_stopped
    trial = new_trial(str(tmp_path / "optuna.log"))
    run_dir = tmp_path / "run"
    signal_on_entering(monkeypatch, phase, sig)
    assert train(synthetic_root, run_dir, *trial_args(trial)) == 0
    assert outcome(run_dir, trial) == reference
    assert not slurm_job.exists()


def test_a_stop_inside_test_lets_the_test_finish(
    synthetic_root: Path, tmp_path: Path, never_stopped: tuple
) -> None:
    _, reference = never_stopped
    trial = new_trial(str(tmp_path / "optuna.log"))
    run_dir = tmp_path / "run"
    stop = stop_at("test", tmp_path / "sent", batch=1)
    assert train(synthetic_root, run_dir, *trial_args(trial), *stop) == 0
    assert outcome(run_dir, trial) == reference


def test_two_stops_in_consecutive_epochs(
    synthetic_root: Path, tmp_path: Path, never_stopped: tuple
) -> None:
    reference_dir, reference = never_stopped
    trial = new_trial(str(tmp_path / "optuna.log"))
    run_dir = tmp_path / "run"
    first = stop_at("train", tmp_path / "first", epoch=0, batch=3)
    assert train(synthetic_root, run_dir, *trial_args(trial), *first) == 143
    second = [
        f"resume={run_dir}",
        "+callbacks.stop_at.once=" + str(tmp_path / "second"),
        "+callbacks.stop_at.epoch=1",
        "+callbacks.stop_at.batch=2",
    ]
    inv = tmp_path / "inv"
    assert run(compose_config(*second, run_dir=inv), second, multirun=False)[0] == 143
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4 + 3  # epoch 0 whole, 3 batches of epoch 1: none replayed
    args = [f"resume={run_dir}"]
    assert run(compose_config(*args, run_dir=inv), args, multirun=False)[0] == 0
    assert outcome(run_dir, trial) == reference
    same_weights(run_dir / "checkpoints" / "last.ckpt", reference_dir / "checkpoints" / "last.ckpt")


# -- every logger keeps the run's history ---------------------------------------------------
def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def epochs_logged(rows: list[dict[str, str]], key: str) -> list[str]:
    return [r["epoch"] for r in rows if r.get(key) not in (None, "")]


def every_epoch_and_step_once(run_dir: Path) -> list[dict[str, str]]:
    """The run's metrics.csv holds both epochs and all 8 training steps, each once."""
    rows = csv_rows(run_dir)
    assert epochs_logged(rows, "val/acc") == ["0", "1"]
    assert epochs_logged(rows, "train/loss_epoch") == ["0", "1"]
    steps = [int(r["step"]) for r in rows if r.get("train/loss") not in (None, "")]
    assert steps == list(range(8))
    return rows


def test_a_resumed_run_keeps_every_loggers_history(
    synthetic_root: Path, tmp_path: Path, never_stopped: tuple
) -> None:
    """CSV rows, TensorBoard scalars and the MLflow run hold every epoch once after a stop
    in epoch 1 and a resume (Lightning's CSV writer would delete the rows before the stop)."""
    mlflow = pytest.importorskip("mlflow", reason="the tracking extra: make install-extras")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    loggers = ["logger=[tensorboard,csv,mlflow]", f"logger.mlflow.tracking_uri={uri}"]
    run_dir = tmp_path / "run"
    stop = stop_at("train", tmp_path / "sent", epoch=1, batch=1)
    assert train(synthetic_root, run_dir, *loggers, *stop) == 143
    assert epochs_logged(csv_rows(run_dir), "val/acc") == ["0"]
    args = [f"resume={run_dir}"]
    assert run(compose_config(*args, run_dir=tmp_path / "inv"), args, multirun=False)[0] == 0

    rows = every_epoch_and_step_once(run_dir)

    (tb_run,) = (run_dir / "tensorboard").iterdir()
    events = EventAccumulator(str(tb_run)).Reload()
    val = [e.step for e in events.Scalars("val/acc")]
    assert len(val) == 2 and len(set(val)) == 2
    assert sorted(e.step for e in events.Scalars("train/loss")) == list(range(8))

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    (mlflow_run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=10
    )
    history = client.get_metric_history(mlflow_run.info.run_id, "val/acc")
    assert sorted(m.step for m in history) == sorted(val)
    assert mlflow_run.info.status == "FINISHED"
    # The figures each logger holds for the last epoch are the run never stopped's.
    assert float(rows[-1]["test/acc"]) == never_stopped[1]["test/acc"]


def test_rows_logged_again_after_a_kill_replace_the_earlier_ones(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """A run continued from a checkpoint older than its last logged step (a kill, not a
    stop) logs those steps again: the CSV holds each step and epoch once."""
    run_dir = tmp_path / "run"
    stop = stop_at("train", tmp_path / "sent", epoch=1, batch=2)
    assert train(synthetic_root, run_dir, "logger=csv", *stop) == 143
    assert epochs_logged(csv_rows(run_dir), "val/acc") == ["0"]
    assert len(epochs_logged(csv_rows(run_dir), "train/loss")) == 7  # steps 4-6 come again
    (epoch0,) = (run_dir / "checkpoints").glob("epoch_000*.ckpt")  # saved at epoch 0's end
    args = [f"resume={epoch0}"]
    assert run(compose_config(*args, run_dir=tmp_path / "inv"), args, multirun=False)[0] == 0
    every_epoch_and_step_once(run_dir)


def test_a_finished_run_trained_longer_matches_the_longer_run(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """``resume=RUN trainer.max_epochs=N`` continues from the fit's end (its last.ckpt):
    the run trained one epoch, then one more, equals the run of two epochs."""
    flat = [a for a in RUN if not a.startswith(("scheduler=", "trainer.max_epochs"))]
    longer = tmp_path / "longer"
    args = [f"data.root={synthetic_root}", *flat, "scheduler=none", "trainer.max_epochs=2"]
    assert run(compose_config(*args, run_dir=longer), args, multirun=False)[0] == 0
    shorter = tmp_path / "shorter"
    args[-1] = "trainer.max_epochs=1"
    assert run(compose_config(*args, run_dir=shorter), args, multirun=False)[0] == 0
    more = [f"resume={shorter}", "trainer.max_epochs=2"]
    assert run(compose_config(*more, run_dir=tmp_path / "inv"), more, multirun=False)[0] == 0
    a, b = metrics_of(shorter), metrics_of(longer)
    assert {k: a[k] for k in SAME} == {k: b[k] for k in SAME}
    same_weights(shorter / "checkpoints" / "last.ckpt", longer / "checkpoints" / "last.ckpt")
