"""The few places where seqmnist reads Lightning state that has no public API.

Each access lives here, in one small function, and ``tests/test_lightning_internals.py``
exercises it on a real Trainer: a Lightning upgrade that moves one of them fails that test
loudly instead of silently changing what a run logs or where a resumed run starts.
"""

from __future__ import annotations

import logging
import threading

import lightning as L


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
