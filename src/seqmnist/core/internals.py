"""The few places where seqmnist reads or sets library state that has no public API
(Lightning's, Optuna's).

Each access lives here, in one small function, and ``tests/core/test_internals.py``
exercises each one on the real library: an upgrade that moves one of them fails that test
loudly instead of silently changing what a run logs, where a resumed run starts, or which
trial a search job reports to.
"""

from __future__ import annotations

import logging
import threading

import lightning as L
from lightning.pytorch.utilities import rank_zero_only


def is_logging_step(trainer: L.Trainer | None) -> bool:
    """Whether the current training step's logged values go to the loggers.

    Lightning's own rule (``log_every_n_steps``, and always on the last step before a stop);
    outside a Trainer every step counts.
    """
    return trainer is None or trainer._logger_connector.should_update_logs


def batches_done_this_epoch(trainer: L.Trainer) -> int:
    """Training batches completed so far in the current epoch (restored on resume)."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def epoch_in_progress(trainer: L.Trainer) -> bool:
    """Whether the fit is inside an epoch (from its start hooks to its end hooks), rather
    than between two: at the next epoch's start hook the last epoch's batch counter is not
    reset yet."""
    progress = trainer.fit_loop.epoch_progress.current
    return progress.started > progress.completed


def validation_or_epoch_end_follows(trainer: L.Trainer) -> bool:
    """At a training batch's end: whether a validation or the epoch's end (its hooks, its
    scheduler step) comes before the next batch (Lightning's own rules for both)."""
    loop = trainer.fit_loop.epoch_loop
    fetcher = trainer.fit_loop._data_fetcher
    return bool(loop._is_training_done or loop._should_check_val_fx(fetcher))


def begin_epoch_afresh(trainer: L.Trainer) -> None:
    """A fit restored from a checkpoint saved at an epoch's start hook (Lightning's
    ``RESTARTED_ON_EPOCH_START``) calls that epoch's start hooks again, but its batch loop
    restarts as if it had stopped on the last epoch's last batch, and reads one batch
    counted past the end. That epoch was whole: the batch loop starts the new one afresh,
    as in a run never stopped."""
    fit_loop = trainer.fit_loop
    if fit_loop.restarted_on_epoch_start:
        fit_loop.epoch_loop.restarting = False


def send_batch_logs(trainer: L.Trainer) -> None:
    """Send the figures logged in the current training batch to the loggers now: Lightning
    sends them after the batch-end hooks, which a stop made in one of them never reaches."""
    connector = trainer._logger_connector
    connector.on_batch_end()
    connector.update_train_step_metrics()


def forget_lightning_sigterm(trainer: L.Trainer) -> None:
    """Clear the flag Lightning's own SIGTERM handler sets (it would end the fit at the
    epoch's end, without a checkpoint): the run's lifecycle has the signal and acts on it."""
    trainer._signal_connector.received_sigterm = False


def stop_child_process_observers() -> int:
    """Stop Lightning's watcher threads of DDP ranks it started (``_ChildProcessObserver``,
    which SIGKILLs this process when a rank ends with a non-zero code); how many."""
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    observers = [t for t in threading.enumerate() if isinstance(t, _ChildProcessObserver)]
    for observer in observers:
        observer._child_processes = []  # its next look finds nothing to watch, and it ends
        observer._finished = True
    return len(observers)


def rank_zero_rank() -> int:
    """The global rank Lightning's rank-zero helpers believe this process has (read from the
    launcher's variables when Lightning was imported)."""
    return int(rank_zero_only.rank)


def set_rank_zero_rank(rank: int) -> None:
    """Tell Lightning's rank-zero helpers this process's rank, when the launcher's variables
    were exported after Lightning was imported (submitit's local tasks)."""
    rank_zero_only.rank = rank


def wandb_run_started(logger: object) -> bool:
    """Whether a ``WandbLogger`` has started its W&B run (its ``experiment`` property would
    start one: asking it to end a run must not begin a new one)."""
    return getattr(logger, "_experiment", None) is not None


class _DropAdvertisements(logging.Filter):
    """Drops Lightning's "Tip: ... try installing litlogger" line, printed on every Trainer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_console() -> None:
    """Keep Lightning's informative console lines, drop its advertisement.

    Lightning prints through the standard logging module (its rank-zero logger), which is
    how its docs say to tune the console; a filter on that logger removes the one line.
    """
    import lightning_utilities.core.rank_zero as rank_zero

    logger = rank_zero.log  # set by lightning.pytorch on import
    if not any(isinstance(f, _DropAdvertisements) for f in logger.filters):
        logger.addFilter(_DropAdvertisements())


def optuna_trial_id(trial: object) -> int:
    """The storage's id of an Optuna trial (what a job needs to reach it; trial numbers are
    per study). Optuna keeps it in a private attribute."""
    return int(trial._trial_id)  # type: ignore[attr-defined]


def joblib_worker_env(n_jobs: int) -> dict[str, str]:
    """The thread limits joblib gives each of its ``n_jobs`` loky workers (OMP_NUM_THREADS
    and the like: the CPUs divided among the workers), for a worker started outside joblib's
    own pool. Joblib computes them in a private method of its loky backend."""
    from joblib._parallel_backends import LokyBackend

    return dict(LokyBackend()._prepare_worker_env(n_jobs=n_jobs))


def cpu_bf16_capabilities() -> tuple[bool, bool]:
    """(AMX tiles, AVX512-BF16) as torch's CPU capability checks see this CPU (private in
    ``torch.cpu``; the ones oneDNN itself goes by)."""
    import torch

    return bool(torch.cpu._is_amx_tile_supported()), bool(torch.cpu._is_avx512_bf16_supported())
