"""A sweep on SLURM waits for its jobs through submitit, which asks SLURM's accounting
(``sacct``, answered by slurmdbd) how they stand. When sacct fails, submitit logs a warning
and keeps each job's last known state: UNKNOWN for a job it has not seen end, which it counts
as not done. A job that then ended without a result (killed: no result pickle) is waited for
forever.

:func:`watch_slurm_jobs` bounds that wait: once sacct has failed for longer than
``SEQMNIST_SACCT_TIMEOUT_S`` seconds (default 300; 0 waits as submitit does), the sweep logs
one message naming the problem and the fix and ends with exit status 2. Its jobs are left as
they are: those still running go on under SLURM, and every run dir stays.

Installed by the SLURM preflight (:class:`seqmnist.jobs.preflight.SlurmPreflight`), in the
sweep's process, before anything is submitted.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import threading
import time

from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from seqmnist.core.errors import ConfigError

log = logging.getLogger("seqmnist.slurm")

SACCT_TIMEOUT_ENV = "SEQMNIST_SACCT_TIMEOUT_S"
# Long enough for slurmdbd to be restarted, short next to a job's hours.
DEFAULT_SACCT_TIMEOUT_S = 300.0


class SacctSilent(SystemExit):
    """Ends the sweep with exit status 2 once :attr:`message` is logged. A SystemExit, not an
    Exception, so that it passes the ``except Exception`` on its way: the Optuna sweeper takes
    a launcher's Exception for a lost trial and launches more, each to wait as long again."""

    def __init__(self, message: str) -> None:
        super().__init__(ConfigError.EXIT_CODE)
        self.message = message


def sacct_timeout_s() -> float | None:
    """``SEQMNIST_SACCT_TIMEOUT_S`` in seconds; None (no bound) for 0."""
    raw = os.environ.get(SACCT_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_SACCT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(
            f"{SACCT_TIMEOUT_ENV}={raw!r}: how long a SLURM sweep waits while sacct fails, "
            f"must be a number of seconds >= 0 (0: no bound). Fix: e.g. {SACCT_TIMEOUT_ENV}=600, "
            f"or unset it ({DEFAULT_SACCT_TIMEOUT_S:.0f} s)."
        )
    return value or None


class BoundedSlurmInfoWatcher(SlurmInfoWatcher):
    """submitit's watcher of SLURM jobs (one, shared by every job of the process), which ends
    the sweep once sacct has failed for longer than ``bound_s`` seconds."""

    def __init__(self, delay_s: int, bound_s: float, sweep_dir: str) -> None:
        super().__init__(delay_s=delay_s)
        self.bound_s: float | None = bound_s  # None: a cluster that keeps no accounting
        self.sweep_dir = sweep_dir
        # submitit asks again after up to delay_s (600 s for SLURM jobs); while sacct fails,
        # sooner, so that the bound is kept to within this.
        self.retry_s = max(1.0, min(30.0, bound_s / 4))
        # The Optuna sweeper waits for each trial's job from a thread of its own.
        self._lock = threading.RLock()
        self._answered = False
        self._failing_since: float | None = None
        self._gave_up: str | None = None

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        self._answered = True  # submitit reads sacct's output only when sacct exited 0
        return super().read_info(string)

    def update_if_long_enough(self, mode: str) -> None:
        failing = self._failing_since is not None
        if mode == "standard" and failing and time.time() - self._last_status_check > self.retry_s:
            mode = "force"
        super().update_if_long_enough(mode)

    def update(self) -> None:
        with self._lock:
            if self._gave_up is not None:  # another thread's wait has ended the sweep
                raise SacctSilent(self._gave_up)
            calls = self.num_calls
            self._answered = False
            super().update()  # on failure: a warning, and every state as it was
            if self.num_calls == calls or self.bound_s is None:  # nothing asked, or no bound
                return
            if self._answered:
                self._failing_since = None
                return
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
            elif now - self._failing_since > self.bound_s:
                self._give_up(now - self._failing_since)

    def _give_up(self, failing_s: float) -> None:
        """One more try, whose words go into the message (submitit does not keep sacct's
        stderr); unless it answers, the message, and the end of the sweep."""
        command = self._make_command() or ["sacct"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            said = str(e)
        else:
            if done.returncode == 0:  # back: the next update reads it
                self._failing_since = None
                return
            # sacct's last line says why (22.05: "Problem talking to the database: ...").
            lines = (done.stderr or done.stdout).strip().splitlines() or [""]
            said = lines[-1].strip()[:300] or f"exit status {done.returncode}"
            if "accounting storage is disabled" in said:
                # No slurmdbd to come back: ending the sweep would end ones that run well. The
                # wait is submitit's, as it was; a job lost there is never seen to end.
                log.warning(
                    f"{said} (sacct): this sweep cannot tell a SLURM job that ended without a "
                    "result (killed) from one still running, and would wait for it forever; "
                    "stop it then with Ctrl+C. Its jobs' run dirs say how each ended."
                )
                self.bound_s = self._failing_since = None
                return
        ids = ",".join(sorted({j.split("_")[0] for j in self._registered - self._finished}))
        self._gave_up = (
            f"SLURM's accounting (sacct) has failed for {failing_s:.0f} s ({said}), so this "
            f"sweep cannot tell whether its SLURM jobs ({ids}) have ended; it stops waiting "
            "for them. Is slurmdbd running? Fix: have slurmdbd started (on the local cluster: make "
            f"cluster-up), see how the jobs ended with: sacct -j {ids}, then run the sweep "
            f"again. Jobs still running go on under SLURM; their run dirs stay in "
            f"{self.sweep_dir}. ({SACCT_TIMEOUT_ENV}={self.bound_s:.0f} is how long sacct may "
            "fail; 0: no bound.)"
        )
        log.error(self._gave_up)
        raise SacctSilent(self._gave_up)


def watch_slurm_jobs(sweep_dir: str, bound_s: float | None) -> None:
    """Bound the wait of this process's sweep on its SLURM jobs (see the module docstring).

    Both waits there are, the SLURM launcher's ``job.results()`` (a plain multirun, and each
    batch or trial of the Optuna sweeper), go through ``SlurmJob.watcher``: submitit's one
    watcher of every SLURM job of the process, a class attribute. Replacing it before the
    first job is submitted covers both, with neither the launcher nor the sweeper changed.
    """
    if bound_s is None:
        return
    delay_s = getattr(SlurmJob.watcher, "_delay_s", 600)
    SlurmJob.watcher = BoundedSlurmInfoWatcher(delay_s, bound_s, sweep_dir)
