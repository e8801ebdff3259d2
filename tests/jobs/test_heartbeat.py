"""The job's side of its search trial's liveness (:class:`seqmnist.jobs.search.OptunaPruning`),
in-process, in a real Trainer against a real study: the trial's heartbeat advances while a
stage (fit, then test) runs, and stops at the stage's end or at an exception in it, leaving
no thread behind. A sweep started again after the first one died judges the jobs it did not
launch by these beats alone (the e2e case: test_search_faults.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from seqmnist.core.internals import optuna_trial_id
from seqmnist.jobs.search import HEARTBEAT_ATTR, OptunaPruning, open_storage

INTERVAL = 0.2  # seconds between beats: a beat is due well within WAIT
WAIT = 10.0  # the longest a step waits for its stage's next beat
STUDY = "beats"


class Tiny(L.LightningModule):
    """A linear model over random batches; its training step raises at batch ``fail_at``."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.fail_at = fail_at

    def training_step(self, batch: Any, idx: int) -> torch.Tensor:
        if idx == self.fail_at:
            raise RuntimeError("the step failed")
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def test_step(self, batch: Any, idx: int) -> None:
        x, y = batch
        self.log("test/loss", torch.nn.functional.cross_entropy(self.layer(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    data = TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    return DataLoader(data, batch_size=2)


class Beats:
    """The trial's heartbeat as the study holds it, read through a storage of its own (as the
    sweep reads it)."""

    def __init__(self, url: str, trial_id: int) -> None:
        self.storage, self.trial_id = open_storage(url), trial_id

    def last(self) -> float | None:
        return self.storage.get_trial(self.trial_id).system_attrs.get(HEARTBEAT_ATTR)

    def next_after(self, beat: float | None, during: str) -> float:
        """The first beat after ``beat``; fails the test when none comes within WAIT."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            now = self.last()
            if now is not None and (beat is None or now > beat):
                return now
            time.sleep(INTERVAL / 4)
        raise AssertionError(f"no heartbeat of the trial within {WAIT} s during {during}")

    def hold_still(self) -> None:
        """The beat does not move over many intervals: no thread beats any more."""
        before = self.last()
        time.sleep(6 * INTERVAL)
        assert self.last() == before, "the trial's heartbeat advanced after its stage ended"


class WaitForBeats(L.Callback):
    """At the end of every training and test batch, waits for the trial's next beat and
    keeps it, by stage: each batch of a stage sees the heartbeat advance."""

    def __init__(self, beats: Beats) -> None:
        self.beats = beats
        self.seen: dict[str, list[float]] = {"fit": [], "test": []}

    def _wait(self, stage: str) -> None:
        seen = [b for s in self.seen.values() for b in s]
        self.seen[stage].append(self.beats.next_after(max(seen, default=None), stage))

    def on_train_batch_end(self, *args: Any) -> None:
        self._wait("fit")

    def on_test_batch_end(self, *args: Any) -> None:
        self._wait("test")


def beating_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "trial-beat" and t.is_alive()]


@pytest.fixture(params=["sqlite", "journal"])
def trial(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, int]:
    """(storage URL, trial id) of a running trial of a new study, in a file in tmp_path."""
    url = (
        f"sqlite:///{tmp_path / 'study.db'}"
        if request.param == "sqlite"
        else f"journal://{tmp_path / 'study.log'}"
    )
    study = optuna.create_study(study_name=STUDY, storage=open_storage(url))
    return url, optuna_trial_id(study.ask())


def trainer_with(pruning: OptunaPruning, *callbacks: L.Callback) -> L.Trainer:
    return L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=0,
        limit_test_batches=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[pruning, *callbacks],
    )


@pytest.fixture
def beating() -> Any:
    """The heartbeat threads alive now that the test started (an earlier failed test's are
    not its own); none may be left at its end."""
    before = set(beating_threads())

    def alive() -> list[threading.Thread]:
        return [t for t in beating_threads() if t not in before]

    yield alive
    assert not alive(), f"a heartbeat thread outlived its test: {alive()}"


def test_the_trial_beats_while_fit_and_test_run_and_not_after(
    trial: tuple[str, int], beating: Any
) -> None:
    url, trial_id = trial
    beats = Beats(url, trial_id)
    pruning = OptunaPruning(url, STUDY, trial_id, "val/acc", heartbeat_interval=INTERVAL)
    probe = WaitForBeats(beats)
    trainer = trainer_with(pruning, probe)
    assert beats.last() is None  # nothing beats before the run sets up

    trainer.fit(Tiny(), train_dataloaders=loader())
    assert len(probe.seen["fit"]) == 3  # each training batch saw a new beat
    assert not beating()  # stopped at the fit's end
    beats.hold_still()

    trainer.test(Tiny(), dataloaders=loader())
    assert len(probe.seen["test"]) == 2  # beating again, from the test's setup
    assert min(probe.seen["test"]) > max(probe.seen["fit"])
    assert not beating()  # stopped at the test's end
    beats.hold_still()


def test_an_exception_in_a_stage_stops_the_beat(trial: tuple[str, int], beating: Any) -> None:
    """Lightning skips the teardown hooks of a stage that raises: the beat stops all the same,
    so a failed run leaves no thread keeping its trial alive in a process that goes on (the
    in-process jobs of a sweep)."""
    url, trial_id = trial
    beats = Beats(url, trial_id)
    pruning = OptunaPruning(url, STUDY, trial_id, "val/acc", heartbeat_interval=INTERVAL)
    probe = WaitForBeats(beats)
    trainer = trainer_with(pruning, probe)
    with pytest.raises(RuntimeError, match="the step failed"):
        trainer.fit(Tiny(fail_at=2), train_dataloaders=loader())
    assert len(probe.seen["fit"]) == 2  # it beat through the batches before the failure
    assert not beating()
    beats.hold_still()
