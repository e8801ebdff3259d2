"""The library state seqmnist reads or sets without a public API (Lightning's, Optuna's), on
the real libraries: if an upgrade moves any of it, these fail here rather than a run
logging, resuming or reporting to a search wrongly. One test (at least) per accessor."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from seqmnist.core.internals import (
    batches_done_this_epoch,
    is_logging_step,
    optuna_trial_id,
    quiet_console,
    rank_zero_rank,
    set_rank_zero_rank,
    stop_child_process_observers,
)


class Probe(L.LightningModule):
    """Records, at every training step, what the accessors say."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.logging_steps: list[bool] = []
        self.done_before: list[int] = []

    def training_step(self, batch, batch_idx):
        self.logging_steps.append(is_logging_step(self.trainer))
        self.done_before.append(batches_done_this_epoch(self.trainer))
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path: Path, **trainer_kwargs) -> Probe:
    probe = Probe()
    data = DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=2)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(probe, data)
    return probe


def test_logging_steps_follow_log_every_n_steps(tmp_path: Path) -> None:
    probe = fit(tmp_path, max_epochs=1, log_every_n_steps=3)
    # Lightning's rule: steps 3 and 6 of 6 (1-based) go to the loggers.
    assert probe.logging_steps == [False, False, True, False, False, True]
    assert is_logging_step(None) is True  # outside a Trainer every step counts


def test_batches_done_counts_the_epoch_so_far(tmp_path: Path) -> None:
    probe = fit(tmp_path, max_epochs=2)
    assert probe.done_before == [0, 1, 2, 3, 4, 5] * 2


def test_the_litlogger_tip_is_dropped_and_the_rest_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    quiet_console()
    quiet_console()  # idempotent: one filter
    with caplog.at_level(logging.INFO):
        L.Trainer(default_root_dir=tmp_path, logger=False, accelerator="cpu")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "litlogger" not in text
    assert "GPU available" in text  # Lightning's informative lines stay
    import lightning_utilities.core.rank_zero as rank_zero

    assert len([f for f in rank_zero.log.filters if "Advert" in type(f).__name__]) == 1


def test_wandb_run_started_tells_a_started_run_from_one_not_yet_begun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb", reason="the tracking extra: make install-extras")
    from lightning.pytorch.loggers import WandbLogger

    from seqmnist.core.internals import wandb_run_started

    monkeypatch.setenv("HOME", str(tmp_path))
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="probe")
    assert not wandb_run_started(logger)
    run = logger.experiment  # starts the run
    try:
        assert wandb_run_started(logger)
    finally:
        run.finish()


def test_stopping_the_child_process_observer_keeps_the_launcher_alive() -> None:
    """Lightning's watcher of DDP ranks SIGKILLs its main process when a rank fails; stopped,
    it ends without killing. A stand-in process plays the main one, never pytest itself."""
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    main = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    failed_rank = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    failed_rank.wait()
    try:
        observer = _ChildProcessObserver(main.pid, [failed_rank], sleep_period=1)
        observer.start()
        assert stop_child_process_observers() >= 1
        observer.join(timeout=10)
        assert not observer.is_alive()
        assert main.poll() is None, "the observer killed its main process"
    finally:
        main.kill()
        main.wait()


def test_the_rank_zero_flag_is_read_and_set() -> None:
    from lightning.pytorch.utilities import rank_zero_only

    before = rank_zero_rank()
    calls: list[int] = []
    noted = rank_zero_only(lambda: calls.append(1))
    try:
        set_rank_zero_rank(3)
        assert rank_zero_rank() == 3 and rank_zero_only.rank == 3
        noted()
        assert calls == []  # Lightning's rank-zero helpers now see rank 3
        set_rank_zero_rank(0)
        noted()
        assert calls == [1]
    finally:
        set_rank_zero_rank(before)


def test_optuna_trial_id_reaches_the_trial_in_its_storage() -> None:
    """Trial numbers restart in each study; the storage's id is what a job needs."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="a", storage=storage).ask()
    study = optuna.create_study(study_name="b", storage=storage)
    trial = study.ask()
    trial.suggest_int("layers", 1, 3)
    assert trial.number == 0 and optuna_trial_id(trial) == 1
    again = optuna.trial.Trial(study, optuna_trial_id(trial))
    assert again.params == trial.params and again.number == 0
