"""One run's lifecycle: its phases, what a stop signal does in each, and its status.

::

    setup -> fit -> test -> report -> done

A stop signal (Ctrl+C, SIGTERM, the SLURM time-limit signals SIGUSR1/SIGUSR2) does what the
phase it lands in allows, and the resumed run (``resume=RUN_DIR``, or a requeued SLURM job's
next start) ends as the run never stopped would:

- **setup** (config, data, model, Trainer): the run ends at once; nothing was trained, so
  there is nothing to save (a requeued job starts over).
- **fit**: the signal is only recorded. :class:`~seqmnist.training.faults.FaultTolerance`
  stops at the end of the current training batch with ``last.ckpt``, on every DDP rank at
  the same step. A batch that validation or the epoch's end follows is not a stopping point:
  the epoch's validation, checkpoints, early stopping, scheduler step and search report come
  first, and the stop comes at the next epoch's start (or at the fit's end).
- **test**, **report** (``metrics.json``, the search trial, the trackers): the run is
  finished first and ends ``completed``; a second Ctrl+C aborts.
- **done**: ignored. In a submitit job the time-limit signals stay ignored until the
  process ends, so a late one neither requeues a finished job nor kills it as it exits.

A run writes its status in ``metrics.json`` (running, completed, pruned, interrupted,
failed) here only; a sweep may still mark a job it lost, from outside the run.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from seqmnist.core.rundir import RunDir

log = logging.getLogger("seqmnist.lifecycle")

# SIGTERM (kill, Kubernetes, SLURM's end of job), SIGUSR1 (the signal Lightning's SLURM docs
# ask for with `#SBATCH --signal=USR1@90`), SIGUSR2 (what submitit asks SLURM to send before
# the time limit). Ctrl+C (SIGINT) is handled too.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
TIME_LIMIT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
SIGNAL_NAMES = {
    signal.SIGINT: "Ctrl+C",
    signal.SIGTERM: "SIGTERM",
    signal.SIGUSR1: "SIGUSR1 (the job's time limit)",
    signal.SIGUSR2: "SIGUSR2 (the job's time limit)",
}


class Phase(enum.Enum):
    SETUP = "setup"
    FIT = "fit"
    TEST = "test"
    REPORT = "report"
    DONE = "done"


def signal_name(signum: int | None) -> str:
    return SIGNAL_NAMES.get(signum or signal.SIGTERM, f"signal {signum}")


class Lifecycle:
    """The phase a run is in, the stop asked for by a signal, and the run's status.

    ``with Lifecycle() as life:`` installs the signal handlers for the run (the commands do
    it); :attr:`active` is the one in force, which the Trainer's callbacks consult. The
    handlers only record a signal: no collective and no checkpoint inside a signal handler,
    where it could interleave with a collective already in flight.
    """

    active: ClassVar[Lifecycle | None] = None

    def __init__(self) -> None:
        self.phase = Phase.SETUP
        self.signal: int | None = None  # a stop asked for before the fit was over
        self.late: int | None = None  # a signal once the fit was over: noted, not obeyed
        self.run: RunDir | None = None
        self.writes = False  # this process writes the run's files (rank 0)
        self._previous: dict[int, Any] = {}

    # -- phases ------------------------------------------------------------------------
    def enter(self, phase: Phase) -> None:
        self.phase = phase

    def stop_after_fit(self, trainer: L.Trainer) -> None:
        """At the fit's end: a stop asked for during the fit ends the run here (its
        ``last.ckpt`` is the fit's end: the resumed run only tests). Then the run is in
        ``test``, where a signal no longer stops it."""
        if self.agreed(trainer):
            raise SIGTERMException()
        self.enter(Phase.TEST)

    # -- signals -----------------------------------------------------------------------
    def _handle(self, signum: int, frame: Any) -> None:
        if self.phase in (Phase.SETUP, Phase.FIT):
            if self.signal is None:
                self.signal = signum
            if signum == signal.SIGINT:
                log.warning("Ctrl+C: stopping after this batch with a checkpoint (again: abort)")
                signal.signal(signal.SIGINT, signal.default_int_handler)
            if self.phase is Phase.SETUP:
                raise SIGTERMException()
            return
        if self.phase is Phase.DONE:
            log.info(f"{signal_name(signum)} after the run ended: ignored")
            return
        if self.late is None:
            self.late = signum
            log.warning(
                f"{signal_name(signum)} during the run's {self.phase.value}: it finishes first"
                + (" (Ctrl+C again: abort)" if signum == signal.SIGINT else "")
            )
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def take_over(self) -> None:
        """(Re)install the handlers. Lightning installs its own SIGTERM handler when a stage
        starts, which stops each rank on its own and broadcasts from inside the handler;
        FaultTolerance calls this from its stage-start hooks to replace it."""
        handlers = {sig: self._handle for sig in STOP_SIGNALS}
        if signal.SIGINT not in (self.signal, self.late):  # after one Ctrl+C, the next aborts
            handlers[signal.SIGINT] = self._handle
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    def agreed(self, trainer: L.Trainer) -> bool:
        """Whether any process of the run was asked to stop (an all-reduce under DDP, so
        every rank stops at the same point)."""
        if trainer.world_size == 1:
            return self.signal is not None
        flag = torch.tensor([self.signal or 0], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        agreed = int(flag)
        if agreed and self.signal is None:
            self.signal = agreed  # another rank's signal: the same exit status everywhere
        return agreed > 0

    @property
    def name(self) -> str:
        return signal_name(self.signal)

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number."""
        return 128 + int(self.signal or signal.SIGTERM)

    def __enter__(self) -> Lifecycle:
        for sig in (signal.SIGINT, *STOP_SIGNALS):
            self._previous[sig] = signal.getsignal(sig)
        self.take_over()
        Lifecycle.active = self
        return self

    def __exit__(self, *exc: Any) -> None:
        Lifecycle.active = None
        ends_process = bool(os.environ.get("SUBMITIT_EXECUTOR"))
        for sig, handler in self._previous.items():
            if ends_process and sig in TIME_LIMIT_SIGNALS:
                # submitit's handler would requeue a job that has finished (or requeued
                # itself) and exit -1, perhaps half-way through writing the result; a
                # Python handler would be reset to the default action, which kills, as the
                # interpreter shuts down. Ignored at the kernel level, the signal does neither.
                signal.signal(sig, signal.SIG_IGN)
            else:
                signal.signal(sig, handler)

    # -- status --------------------------------------------------------------------------
    def begin(self, run: RunDir, metrics: dict[str, Any], writes: bool) -> None:
        """The run has a directory: ``metrics.json`` says ``running`` (a report of a sweep in
        progress shows the job so), written by the first process only."""
        self.run, self.writes = run, writes
        if writes:
            run.write_metrics({**metrics, "status": "running"})

    def finish(self, metrics: dict[str, Any]) -> None:
        """The run's outcome (``completed`` or ``pruned``) and figures."""
        if self.writes and self.run is not None:
            self.run.write_metrics(metrics)

    def interrupted(self, run: RunDir, requeue_refused: bool = False) -> int:
        """A signal stopped the run: say where its checkpoint is and how to continue (and,
        for a time-limit stop SLURM would not requeue, that it did not); the exit status."""
        if run.last_ckpt.is_file():
            hint = (
                f"checkpoint {run.last_ckpt}; continue with: "
                f"python -m seqmnist.train resume={run.path}"
            )
        else:
            hint = "it stopped before its first checkpoint, so there is nothing to resume"
        refused = ", and SLURM did not requeue the job" if requeue_refused else ""
        message = f"stopped by {self.name}{refused}; {hint}"
        if run.metrics_file.exists():
            run.record_status(message, status="interrupted")
        log.error(message)
        return self.exit_code

    @staticmethod
    def failed(run: RunDir, error: BaseException, record: bool) -> None:
        """A run that got as far as starting (or any job of a sweep) is marked failed."""
        if record or run.metrics_file.exists():
            run.record_status(error)
