"""Surviving faults: RNG state in checkpoints, atomic checkpoint files, and the clean stop
inside a fit that a signal asks for (:mod:`seqmnist.training.lifecycle` decides what a
signal does in each phase of a run), on one process or many.

A run killed at any point and resumed from its ``last.ckpt`` (``seqmnist.jobs.resume``)
ends with the same metrics as an uninterrupted run (on CPU, single process) because
everything that decides the next training step is in the checkpoint: weights, optimizer
and scheduler (Lightning), loop counters (Lightning), each rank's position in the epoch's
shuffled order (``seqmnist.data.sampler.EpochBatches``, via the data module's state), the
epoch's partial metric sums of every rank (the LightningModule) and the random number
generators (:class:`FaultTolerance`). Under DDP on CPU the same holds (tested with gloo).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from seqmnist.core.compat import cuda_rng_state
from seqmnist.core.files import atomic_file
from seqmnist.core.internals import (
    begin_epoch_afresh,
    forget_lightning_sigterm,
    is_logging_step,
    send_batch_logs,
    validation_or_epoch_end_follows,
)
from seqmnist.core.rundir import LAST_CKPT, RunDir
from seqmnist.training.lifecycle import Lifecycle, Phase

log = logging.getLogger("seqmnist.faults")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, then renames it into place
    (:func:`seqmnist.core.files.atomic_file`): a kill during a save leaves the previous file
    intact. Lightning's own save goes through the system temp dir, which is not an atomic
    rename when it lies on another file system.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        # Synced to disk before the rename: the file a resume reads must be whole.
        with atomic_file(Path(path), fsync=True) as f:
            torch.save(checkpoint, f)


def rng_states(device: torch.device | None = None) -> dict[str, Any]:
    """The generators a training step may draw from (dropout, user code): the CPU's,
    Python's, and the CUDA generator of this process's own device (not every visible GPU:
    under DDP each rank has one, and a resume may see fewer GPUs)."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device is not None and device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, Any], device: torch.device | None = None) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(_as_tuple(states["python"]))
    cuda = states.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    cuda = cuda_rng_state(cuda, device.index or 0)
    if cuda is None:
        log.warning("the checkpoint has no CUDA generator state for %s; left as seeded", device)
        return
    torch.cuda.set_rng_state(cuda, device)


def _as_tuple(value: Any) -> Any:
    # random.setstate wants tuples all the way down; a checkpoint round trip may give lists.
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def logged(trainer: L.Trainer) -> dict[str, float]:
    """The scalar figures the run has logged so far (``trainer.callback_metrics``)."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def last_logged(trainer: L.Trainer, key: str) -> float | None:
    """A figure the run logged: in this fit, else in the checkpoint it was restored from
    (a run resumed after its last validation runs no epoch, so logs nothing anew)."""
    value = trainer.callback_metrics.get(key)
    if value is not None:
        return float(value)
    for cb in trainer.callbacks:
        if isinstance(cb, FaultTolerance) and key in cb.restored_metrics:
            return cb.restored_metrics[key]
    return None


class FaultTolerance(L.Callback):
    """RNG state in every checkpoint, and a clean stop with a checkpoint on a signal.

    The generators are put back at the start of the training epoch after a restore, before
    its first batch (and that batch's augmentation):
    that is where the checkpointed run drew from them next, whatever the restore, the
    sanity check or the loaders drew in between. Under DDP each rank's generators are
    saved (gathered into rank 0's file) and each rank gets its own back.

    A signal during the fit (see :class:`~seqmnist.training.lifecycle.Lifecycle`) lets the
    current training batch finish; then every rank saves ``last.ckpt`` together and raises
    ``SIGTERMException``. Where validation or the epoch's end follows the batch, they run
    first and the stop comes at the next epoch's start, or at the fit's end: a stop never
    skips a validation (its checkpoint, early stopping, plateau step, search report), and
    the resumed run's loop counters are those of a run never stopped.
    """

    def __init__(self, dirpath: str | None = None, filename: str = LAST_CKPT) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self._pending: dict[str, Any] | None = None
        self._trainer: L.Trainer | None = None
        # The logged figures of the checkpoint this run was restored from (see logged).
        self.restored_metrics: dict[str, float] = {}

    # -- generators ------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def _device(self) -> torch.device | None:
        return self._trainer.strategy.root_device if self._trainer is not None else None

    def state_dict(self) -> dict[str, Any]:
        states = rng_states(self._device())
        trainer = self._trainer
        # The figures logged so far (val/acc_best, ...): a run restored from a checkpoint
        # taken after its last validation trains no further epoch, so logs none of them.
        metrics = logged(trainer) if trainer is not None else {}
        if trainer is None or trainer.world_size == 1:
            return {"rng": states, "metrics": metrics}
        # Every rank builds the checkpoint; rank 0 writes it, with all ranks' generators.
        gathered: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, states)
        return {"rng_per_rank": gathered, "metrics": metrics}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored_metrics = dict(state_dict.get("metrics") or {})
        per_rank = state_dict.get("rng_per_rank")
        if per_rank is None:
            self._pending = state_dict.get("rng")
            return
        rank = self._trainer.global_rank if self._trainer is not None else 0
        if rank < len(per_rank):
            self._pending = per_rank[rank]
        else:
            log.warning("the checkpoint has no generator state for rank %d; left as seeded", rank)

    def _put_back(self, trainer: L.Trainer, *args: Any) -> None:
        if self._pending is not None:
            set_rng_states(self._pending, self._device())
            self._pending = None

    # Before the first batch is moved to the device, where training augmentation draws
    # (seqmnist.data.augment): at the epoch's start (on_train_epoch_start below), and at the
    # training's start, since Lightning does not call on_train_epoch_start when it resumes
    # mid-epoch (the loaders draw nothing from the global RNG in between). The batch start
    # is kept for safety.
    on_train_batch_start = _put_back

    # -- signals ---------------------------------------------------------------------
    def _stage_starts(self, trainer: L.Trainer, *args: Any) -> None:
        life = Lifecycle.active
        if life is not None:
            life.take_over()
            if life.signal is not None:  # Lightning's handler saw it first: ours acts on it
                forget_lightning_sigterm(trainer)

    on_sanity_check_start = on_validation_start = on_test_start = on_predict_start = _stage_starts

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stage_starts(trainer)
        self._put_back(trainer)
        begin_epoch_afresh(trainer)  # restored from a stop at an epoch's start

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        folder = self.dirpath or RunDir(trainer.default_root_dir).checkpoints
        return Path(folder) / self.filename

    def _save(self, trainer: L.Trainer) -> None:
        """``last.ckpt`` (every rank takes part: the generators are gathered)."""
        trainer.save_checkpoint(self.checkpoint_path(trainer), weights_only=False)

    def _stop(self, trainer: L.Trainer, after_batch: bool = False) -> None:
        """Every rank saves ``last.ckpt`` together, then the fit ends."""
        if after_batch:
            send_batch_logs(trainer)  # the batch's figures reach the loggers, as unstopped
        self._save(trainer)
        raise SIGTERMException()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        life = Lifecycle.active
        if life is None or (trainer.world_size == 1 and life.signal is None):
            return  # the common case, every step: nothing asked, nothing to decide
        # Under DDP the ranks agree on the logging steps only (every log_every_n_steps,
        # where the loss is read back anyway): no extra device sync on the other steps.
        if trainer.world_size > 1 and not is_logging_step(trainer):
            return
        if validation_or_epoch_end_follows(trainer):
            return  # stopping here would skip them: the stop comes once they are done
        if life.agreed(trainer):
            self._stop(trainer, after_batch=True)  # the batch is done on every rank

    # Between two epochs, and at the fit's end, last.ckpt is written whatever else happens:
    # Lightning's ModelCheckpoint writes last.ckpt only beside a new best one, so after an
    # epoch that is not the best it would lag, and so would a run continued with more
    # epochs. A resume from here starts the next epoch exactly (the stop matrix's test).
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._put_back(trainer)
        life = Lifecycle.active
        stop = life is not None and life.agreed(trainer)
        if trainer.current_epoch > 0 or stop:
            self._save(trainer)
        if stop:
            raise SIGTERMException()  # the last epoch is whole: validated, stepped, reported

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)
        life = Lifecycle.active
        if life is None:
            return
        if life.agreed(trainer):
            raise SIGTERMException()  # saved above: the resumed run only tests
        life.enter(Phase.TEST)  # from here on, a signal lets the run finish
