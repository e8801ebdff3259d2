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
