"""Surviving faults: RNG state in checkpoints, atomic checkpoint files, clean stops on
SIGINT/SIGTERM.

A run killed at any point and resumed from its ``last.ckpt`` (``seqmnist.runs.resume``)
ends with the same metrics as an uninterrupted run (on CPU, single process) because
everything that decides the next training step is in the checkpoint: weights, optimizer
and scheduler (Lightning), loop counters (Lightning), the position in the epoch's shuffled
order (``seqmnist.data.sampler.ResumableSampler``, via the data module's state) and the
random number generators (:class:`FaultTolerance`).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger("seqmnist.faults")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, then renames it into place.

    A kill during a save leaves the previous file intact (and at worst a ``.tmp`` file
    that nothing reads). Lightning's own save goes through the system temp dir, which is
    not an atomic rename when it lies on another file system.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def rng_states() -> dict[str, Any]:
    """The global generators a training step may draw from (dropout, user code)."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(_as_tuple(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuple(value: Any) -> Any:
    # random.setstate wants tuples all the way down; a checkpoint round trip may give lists.
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


class FaultTolerance(L.Callback):
    """RNG state in every checkpoint, and a checkpoint + resume hint when a signal stops the run.

    The generators are put back just before the first training batch after a restore:
    that is where the checkpointed run drew from them next, whatever the restore, the
    sanity check or the loaders drew in between.

    SIGTERM (and Ctrl+C, see :func:`sigint_as_sigterm`) lets the current batch finish;
    Lightning then raises ``SIGTERMException`` and this callback saves ``last.ckpt``.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "last.ckpt") -> None:
        self.dirpath = dirpath
        self.filename = filename
        self._pending: dict[str, Any] | None = None
        self.saved_on_signal: str | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        folder = self.dirpath or Path(trainer.default_root_dir) / "checkpoints"
        return Path(folder) / self.filename

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exc: BaseException):
        # Only a signal stop is a clean point to save: the batch has finished. Other errors
        # (a NaN loss, a crash) keep the last good checkpoint instead.
        if not isinstance(exc, SIGTERMException) or trainer.state.fn != "fit":
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        self.saved_on_signal = str(path)


class sigint_as_sigterm:  # noqa: N801 - a context manager named for what it does
    """Ctrl+C asks the run to stop after the current batch, like SIGTERM; a second one aborts.

    Lightning stops cleanly on SIGTERM but treats Ctrl+C as an immediate interrupt, which
    can land in the middle of an optimizer step. Routing the first Ctrl+C through SIGTERM
    gives it the same clean stop and the same checkpoint. Outside ``Trainer.fit``/``test``
    (where Lightning's handler is not installed) a SIGTERM raises ``SIGTERMException`` at once.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.signal = signal.SIGINT
        log.warning("Ctrl+C: stopping after this batch and saving a checkpoint (again: abort now)")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signal.SIGTERM)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self.signal is None:
            self.signal = signal.SIGTERM
        # During fit/test Lightning's handler is installed and calls this one as well; it
        # stops the loop at the end of the batch, so only raise when we are on our own.
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            raise SIGTERMException()

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number."""
        return 128 + int(self.signal or signal.SIGTERM)

    def __enter__(self) -> sigint_as_sigterm:
        for sig, handler in ((signal.SIGINT, self._on_sigint), (signal.SIGTERM, self._on_sigterm)):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
