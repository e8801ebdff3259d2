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
    begin_epoch_afresh,
    epoch_in_progress,
    forget_lightning_sigterm,
    is_logging_step,
    joblib_worker_env,
    optuna_trial_id,
    quiet_console,
    rank_zero_rank,
    send_batch_logs,
    set_rank_zero_rank,
    stop_child_process_observers,
    validation_or_epoch_end_follows,
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


class Validates(Probe):
    def validation_step(self, batch, batch_idx):
        return None


class Stopped(Exception):
    """Ends a fit in a test, as a stop would."""


class Boundaries(L.Callback):
    """Records what the stop-point accessors say at each batch's end and epoch's start."""

    def __init__(self) -> None:
        self.follows: list[bool] = []
        self.in_progress: list[tuple[str, bool]] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self.follows.append(validation_or_epoch_end_follows(trainer))
        self.in_progress.append(("batch", epoch_in_progress(trainer)))

    def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
        self.in_progress.append(("epoch start", epoch_in_progress(trainer)))


def test_where_a_validation_or_the_epochs_end_follows_a_batch(tmp_path: Path) -> None:
    probe, seen = Validates(), Boundaries()
    data = DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=2)  # 6 batches
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        val_check_interval=3,  # a validation after batches 3 and 6 of each epoch
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[seen],
    )
    trainer.fit(probe, data, data)
    assert seen.follows == [False, False, True, False, False, True] * 2
    # At the next epoch's start the last one's batch count is still there: between epochs.
    assert seen.in_progress == ([("epoch start", False)] + [("batch", True)] * 6) * 2


def test_an_epoch_start_restore_reads_the_new_epoch_from_its_first_batch(tmp_path: Path) -> None:
    """Saved at epoch 1's start hook and restored, the fit reads epoch 1's 6 batches (left to
    Lightning, its batch loop restarts as if on epoch 0's last batch and reads one batch,
    counted as the 7th of 6)."""

    class SaveAtEpochOneStart(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
            if trainer.current_epoch == 1 and not (tmp_path / "e1.ckpt").exists():
                trainer.save_checkpoint(tmp_path / "e1.ckpt")
                raise Stopped

    class AfreshOnStart(L.Callback):
        def on_train_start(self, trainer: L.Trainer, *args) -> None:
            begin_epoch_afresh(trainer)

    data = DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=2)
    kwargs = dict(
        default_root_dir=tmp_path,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(Stopped):
        L.Trainer(**kwargs, callbacks=[SaveAtEpochOneStart()]).fit(Probe(), data)
    read = {}
    for fixed in (False, True):
        probe = Probe()
        callbacks = [AfreshOnStart()] if fixed else []
        L.Trainer(**kwargs, callbacks=callbacks).fit(probe, data, ckpt_path=tmp_path / "e1.ckpt")
        read[fixed] = probe.done_before
    assert read == {False: [6], True: [0, 1, 2, 3, 4, 5]}


def test_a_batchs_logs_are_sent_and_lightnings_sigterm_flag_cleared(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    class LogsThenStops(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
            if trainer.global_step == 2:
                send_batch_logs(trainer)
                trainer._signal_connector.received_sigterm = True
                forget_lightning_sigterm(trainer)
                assert not trainer.received_sigterm
                raise Stopped

    class Logs(Probe):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("loss", loss)
            return loss

    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        log_every_n_steps=1,
        logger=CSVLogger(tmp_path, name="csv", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LogsThenStops()],
    )
    with pytest.raises(Stopped):
        trainer.fit(Logs(), DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=2))
    trainer.loggers[0].save()
    rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    # The step the stop came after (global step 2 at its end is step index 1) is there too.
    assert [r.split(",")[-1] for r in rows[1:]] == ["0", "1"]


def test_joblibs_worker_thread_limits_divide_the_cpus() -> None:
    import os

    env = joblib_worker_env(2)
    cpus = os.cpu_count() or 1
    assert env["OMP_NUM_THREADS"] == str(max(cpus // 2, 1))


def test_the_cpu_bf16_capabilities_are_torchs_own_checks() -> None:
    from seqmnist.core.internals import cpu_bf16_capabilities

    amx, avx512_bf16 = cpu_bf16_capabilities()
    assert (amx, avx512_bf16) == (
        torch.cpu._is_amx_tile_supported(),
        torch.cpu._is_avx512_bf16_supported(),
    )
    # What /proc/cpuinfo says of this CPU agrees (Linux): the flags oneDNN reads.
    flags = Path("/proc/cpuinfo").read_text().split()
    assert avx512_bf16 == ("avx512_bf16" in flags)
    assert amx == ("amx_tile" in flags)
