"""A training job as one trial of an Optuna study: samplers, pruners and storages by name, and
the callback that reports the monitored metric (``optuna_trial.monitor``) after each
validation epoch and stops a losing trial.

The job reaches its trial through the study's storage (a database or a journal file), never
through the memory of the process that asked for it, so pruning works under every launcher:
in-process, joblib workers, submitit and SLURM jobs on other machines.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from omegaconf import DictConfig

from seqmnist.core.errors import ConfigError, SeqMNISTError

log = logging.getLogger("seqmnist.search")

if TYPE_CHECKING:  # optuna is imported only by jobs of a search: it is slow to import
    import optuna

SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "cmaes": "CmaEsSampler",
    "gp": "GPSampler",
    "qmc": "QMCSampler",
    "nsgaii": "NSGAIISampler",
    "bruteforce": "BruteForceSampler",
}
# Samplers whose package Optuna does not install with itself.
SAMPLER_PACKAGES = {"CmaEsSampler": "cmaes"}
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "asha": "SuccessiveHalvingPruner",
    "none": "NopPruner",
}
# Where each pruner starts judging: the median pruner once three trials have set a standard,
# from the first epoch on; hyperband runs successive halving from one epoch up, keeping a
# third at each rung. (make search-compare measured the choice: docs/sweeps-and-search.md.)
PRUNER_DEFAULTS: dict[str, dict[str, Any]] = {
    "MedianPruner": {"n_startup_trials": 3, "n_warmup_steps": 0},
    # Keeps the best quarter of the trials at each epoch: more aggressive than the median.
    "PercentilePruner": {"percentile": 25.0, "n_startup_trials": 3, "n_warmup_steps": 0},
    "HyperbandPruner": {"min_resource": 1, "reduction_factor": 3},
    "SuccessiveHalvingPruner": {"min_resource": 1, "reduction_factor": 3},
}
STUDY_PRUNER_ATTR = "seqmnist:pruner"  # the study's pruner spec, read back by every job
HEARTBEAT_ATTR = "seqmnist:heartbeat"  # a trial's last sign of life (seconds since the epoch)
# The SLURM job a trial's run requeued itself as: it waits in the queue without beating
# (SLURM holds a requeued job back for at least its cred_expire, 120 s by default).
REQUEUED_ATTR = "seqmnist:requeued_job"
# SLURM job states of a job that will still run (or runs): its trial is not stale.
WAITING_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED"}


def quiet_optuna() -> None:
    """Optuna marks heartbeats and stale-trial handling experimental, and warns that heartbeats
    are meant for Study.optimize: both are what this project's resumable search is built on
    (it records the heartbeats itself), so the warnings would only repeat on every run."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def _spec_name(spec: Any) -> tuple[str, dict[str, Any]]:
    """``"median"`` or ``{"name": "median", **kwargs}`` -> ("median", kwargs)."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        return spec["name"], {k: v for k, v in spec.items() if k != "name"}
    raise ConfigError(f"{spec!r} is not a name or a {{name: ..., <keyword>: ...}} mapping")


def _optuna_class(module: Any, name: str, table: dict[str, str], key: str) -> type:
    cls_name = table.get(name.lower(), name)
    cls = getattr(module, cls_name, None)
    if not isinstance(cls, type):
        known = ", ".join(sorted(table))
        raise ConfigError(
            f"hydra.sweeper.{key}={name!r} is not an Optuna {key}; {key} must be one of "
            f"{known}, or a class name of optuna.{module.__name__.rsplit('.', 1)[-1]}."
        )
    return cls


def make_sampler(spec: Any, seed: int | None) -> optuna.samplers.BaseSampler:
    """An Optuna sampler from its short name (``tpe``, ``random``, ...) or class name, seeded."""
    import inspect

    import optuna

    name, kwargs = _spec_name(spec)
    cls = _optuna_class(optuna.samplers, name, SAMPLERS, "sampler")
    needs = SAMPLER_PACKAGES.get(cls.__name__)
    if needs and importlib.util.find_spec(needs) is None:
        # Optuna would fail only at the first trial's sampling, mid-search.
        raise ConfigError(
            f"hydra.sweeper.sampler={spec!r} needs the {needs} package, an optional extra. "
            "Fix: make install-extras (or pip install -e '.[search]')."
        )
    if seed is not None and "seed" in inspect.signature(cls).parameters:
        kwargs.setdefault("seed", seed)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"hydra.sweeper.sampler={spec!r}: {e}") from None


def make_pruner(spec: Any) -> optuna.pruners.BasePruner:
    """An Optuna pruner from ``median``, ``hyperband``, ``none`` or a class name."""
    import optuna

    name, kwargs = _spec_name(spec)
    cls = _optuna_class(optuna.pruners, name, PRUNERS, "pruner")
    try:
        return cls(**{**PRUNER_DEFAULTS.get(cls.__name__, {}), **kwargs})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"hydra.sweeper.pruner={spec!r}: {e}") from None


# A storage password reaches the jobs through their environment, never their config: a job's
# overrides, .hydra/ files, resolved_config.yaml and the launcher's log all hold the URL.
PASSWORD_ENV = "SEQMNIST_STORAGE_PASSWORD"


def _is_database(url: str) -> bool:
    return "://" in url and not url.startswith(("journal://", "sqlite"))


def without_password(url: str) -> tuple[str, str | None]:
    """``(the URL less its password, the password)``; a URL without one as it is."""
    if not _is_database(url):
        return url, None
    from sqlalchemy.engine import URL, make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL at all: open_storage says so
        return url, None
    if parsed.password is None:
        return url, None
    bare = URL.create(
        parsed.drivername,
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=parsed.query,
    )
    return bare.render_as_string(hide_password=False), str(parsed.password)


def with_password(url: str) -> str:
    """A job's storage URL with the password its sweep put in :data:`PASSWORD_ENV`, when the
    URL names a user and no password."""
    secret = os.environ.get(PASSWORD_ENV)
    if not secret or not _is_database(url):
        return url
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return url
    if parsed.username is None or parsed.password is not None:
        return url
    return parsed.set(password=secret).render_as_string(hide_password=False)


def shown(url: str) -> str:
    """The URL as messages and logs may show it: any password as ``***``."""
    if without_password(url)[1] is None:
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None):
    """An Optuna storage: ``sqlite:///file.db`` (and any SQLAlchemy URL) or a journal file
    (``journal:///path`` or a path ending in ``.log``) on a shared file system. A URL that
    names a user and no password takes it from :data:`PASSWORD_ENV` (set by the sweep).

    Raises :class:`ConfigError` naming the URL (never its password) when it is malformed, its
    driver is missing or the database cannot be reached.
    """
    import optuna
    import sqlalchemy.exc

    quiet_optuna()
    url, said = with_password(url), shown(url)
    if url.startswith("journal://") or url.endswith((".log", ".journal")):
        path = Path(url.removeprefix("journal://")).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
        except OSError as e:
            raise ConfigError(
                f"hydra.sweeper.storage={said}: cannot open the journal ({e})"
            ) from None
        return optuna.storages.JournalStorage(backend)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                )
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as e:
                # Two workers creating a new database's tables at once: one wins, the
                # other finds them made on its next try (SQLite says "table ... already
                # exists", other databases a duplicate key).
                racing = isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in str(e)
                if not racing:
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise ConfigError(f"hydra.sweeper.storage={said}: its tables could not be created")
    except ImportError as e:  # Optuna re-raises a missing driver as a plain ImportError
        missing = getattr(e.__cause__, "name", None) or "the driver"
        raise ConfigError(
            f"hydra.sweeper.storage={said}: its database driver is not installed ({missing}). "
            "Fix: pip install it (pip install -e '.[postgres]' for postgresql://, pymysql for "
            "mysql+pymysql://), or use sqlite:///FILE or a journal file."
        ) from None
    except sqlalchemy.exc.ArgumentError as e:
        raise ConfigError(
            f"hydra.sweeper.storage={said!r} is not a storage URL ({e}). Fix: sqlite:///PATH.db, "
            "postgresql://USER:PASSWORD@HOST/DB, mysql+pymysql://..., or a journal file "
            "journal:///PATH.log."
        ) from None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.DBAPIError) as e:
        reason = " ".join(str(e.orig if hasattr(e, "orig") else e).split())[:200]
        raise ConfigError(
            f"hydra.sweeper.storage={said}: the database cannot be reached ({reason}). Fix: "
            "check the host, port, credentials and that the server runs."
        ) from None


class SearchError(SeqMNISTError):
    """A job of a search could not reach its study."""


class OptunaPruning(L.Callback):
    """The job's side of its trial: it keeps the trial alive, reports ``monitor`` after each
    validation epoch (when the study's pruner says the trial is losing, the run stops at the
    end of that epoch), and tells the study how the run ended (:meth:`finish`).

    The job, not the sweep that launched it, owns its trial's liveness: while it trains it
    records a heartbeat every ``heartbeat_interval`` seconds, so a sweep started again after
    the first one died (its SLURM jobs still running) waits for these trials instead of
    failing them, and the job's own result is told even when no sweep waits for it. A trial
    the study has closed meanwhile is let go: the run trains on and reports no more.

    Only rank 0 talks to the storage; under DDP its verdict is broadcast so every rank stops.
    """

    def __init__(
        self,
        storage: str,
        study_name: str,
        trial_id: int,
        monitor: str,
        heartbeat_interval: int = 30,
    ) -> None:
        self.storage = storage
        self.study_name = study_name
        self.trial_id = int(trial_id)
        self.monitor = monitor
        self.heartbeat_interval = heartbeat_interval
        self.pruned_at_epoch: int | None = None
        self.let_go: str | None = None  # why this run no longer reports, once it does not
        self._storage: Any = None
        self._study: optuna.Study | None = None
        self._trial: optuna.trial.Trial | None = None
        # Made when beating starts: a callback holding them could not be pickled (ddp_spawn).
        self._lock: threading.Lock | None = None
        self._stop_beating: threading.Event | None = None
        self._beating: threading.Thread | None = None

    def _open(self) -> optuna.trial.Trial:
        with self._lock or contextlib.nullcontext():  # the beating thread opens it too
            return self._open_once()

    def _open_once(self) -> optuna.trial.Trial:
        if self._trial is None:
            import optuna

            # With the interval, so a database storage records Optuna's own heartbeat too.
            self._storage = open_storage(self.storage, self.heartbeat_interval)
            study = optuna.load_study(study_name=self.study_name, storage=self._storage)
            study.pruner = make_pruner(study.user_attrs.get(STUDY_PRUNER_ATTR, "none"))
            self._study = study
            self._trial = optuna.trial.Trial(study, self.trial_id)
        return self._trial

    def _still_running(self) -> bool:
        """Whether the study still counts the trial as running; if not, let it go (once)."""
        import optuna

        if self.let_go is not None:
            return False
        state = self._storage.get_trial(self.trial_id).state
        if state == optuna.trial.TrialState.RUNNING:
            return True
        self.let_go = f"the study has closed trial {self.trial_id} ({state.name})"
        log.warning(f"{self.let_go}: this run trains on and reports to it no more")
        return False

    # -- liveness -----------------------------------------------------------------------
    # Beating through each stage (fit, then test): a stage's end, or an exception in it,
    # stops the thread, so a run that fails leaves none behind in a process that goes on (a
    # sweep's in-process jobs); Lightning skips teardown hooks when a stage raises.
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero and self._beating is None:
            self._lock = self._lock or threading.Lock()
            self._stop_beating = threading.Event()
            self._beating = threading.Thread(target=self._beat, daemon=True, name="trial-beat")
            self._beating.start()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.stop_beating()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.stop_beating()

    def stop_beating(self) -> None:
        if self._beating is not None and self._stop_beating is not None:
            self._stop_beating.set()
            self._beating.join(timeout=60)  # at most one storage call in flight
            self._beating = None

    def _beat(self) -> None:
        while True:
            try:
                self._open()
                record_heartbeat(self._storage, self.trial_id)
            except Exception:  # a passing database error, a closed trial: try again later
                log.debug("heartbeat of trial %s not recorded", self.trial_id, exc_info=True)
            stop = self._stop_beating
            if stop is None or stop.wait(self.heartbeat_interval):
                return

    # -- reports ------------------------------------------------------------------------
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        verdict: tuple[bool, str | None] = (False, None)
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            try:
                if value is not None and math.isfinite(float(value)):
                    trial = self._open()
                    if self._still_running():
                        trial.report(float(value), step=trainer.current_epoch)
                        verdict = (trial.should_prune(), None)
            except Exception as e:  # the storage: raised on every rank below, not just here
                verdict = (False, " ".join(f"{type(e).__name__}: {e}".split())[:300])
        # Under DDP the other ranks wait here for rank 0's verdict; an error reaches them too,
        # rather than leaving them in the collective until the process group times out.
        prune, error = trainer.strategy.broadcast(verdict)
        if error:
            raise SearchError(
                f"trial {self.trial_id} of study {self.study_name!r} could not report epoch "
                f"{trainer.current_epoch} to the search's storage ({error}). Fix: check that "
                f"the storage ({self.storage}) can be reached from this machine."
            )
        if prune:
            self.pruned_at_epoch = trainer.current_epoch
            trainer.should_stop = True

    def finish(self, metrics: dict[str, Any], metric: str) -> None:
        """Tell the study how the run ended (rank 0, after ``metrics.json`` is written):
        pruned, or complete with ``metrics[metric]``. The sweep tells it too, when it still
        waits; whichever comes second finds the trial finished and leaves it. Never raises:
        the run itself is done and saved."""
        import optuna

        try:
            self._open()
            if not self._still_running():
                return
            assert self._study is not None
            if self.pruned_at_epoch is not None:
                self._study.tell(self._trial, state=optuna.trial.TrialState.PRUNED)
            elif isinstance(metrics.get(metric), (int, float)) and math.isfinite(metrics[metric]):
                self._study.tell(self._trial, float(metrics[metric]))
        except RuntimeError as e:  # a grid sampler's study.stop(): the trial is told already
            if "Study.stop" not in str(e):
                log.warning(f"trial {self.trial_id}: the result was not told ({e})")
        except Exception as e:
            log.warning(f"trial {self.trial_id}: the result was not told ({e})")


def record_heartbeat(storage: Any, trial_id: int) -> None:
    """A trial's heartbeat, from whichever process keeps it alive (the job, or the sweep
    between its ask and the job's start): a system attribute every storage keeps, and Optuna's
    own heartbeat where the storage has one (what optuna.storages.fail_stale_trials reads)."""
    import optuna

    if isinstance(storage, optuna.storages.RDBStorage) and storage.heartbeat_interval:
        storage.record_heartbeat(trial_id)
    storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())


def mark_requeued(cfg: Any, job_id: str) -> None:
    """A run that requeued its SLURM job tells its trial so, with a last heartbeat: a sweep's
    stale check then asks SLURM about the job before it fails the trial (see
    :func:`still_queued`). Never raises: the requeue itself has happened."""
    node = cfg.get("optuna_trial") if hasattr(cfg, "get") else None
    if not node or node.get("trial_id") is None:
        return
    try:
        storage = open_storage(str(node.storage))
        storage.set_trial_system_attr(int(node.trial_id), REQUEUED_ATTR, job_id)
        record_heartbeat(storage, int(node.trial_id))
    except Exception as e:
        log.warning(f"trial {node.get('number')}: its requeue was not recorded ({e})")


def still_queued(job_ids: list[str], timeout: float = 30) -> set[str] | None:
    """Which of these SLURM jobs are still queued or running (``squeue``); None when SLURM
    cannot be asked (the caller then judges by heartbeats alone)."""
    import subprocess

    if not job_ids:
        return set()
    try:
        done = subprocess.run(
            ["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        # squeue refuses ids it no longer knows ("Invalid job id specified"): all ended.
        return set() if "Invalid job id" in done.stderr else None
    waiting = set()
    for line in done.stdout.splitlines():
        job, _, state = line.strip().partition(" ")
        if state in WAITING_STATES:
            waiting.add(job)
    return waiting


def resumed_trial(cfg: DictConfig) -> str | None:
    """A resumed run that was a search trial keeps reporting to it only while the trial still
    runs (a SLURM job requeued at its time limit, say); a trial the study has closed
    (complete, pruned or failed: "train the best trial longer") is let go, as is one whose
    storage cannot be reached. Changes ``cfg`` in place; returns what was decided, to say."""
    node = cfg.get("optuna_trial")
    if not node or node.get("trial_id") is None:
        return None
    number, study = node.get("number"), node.get("study_name")
    try:
        import optuna

        storage = open_storage(str(node.storage))
        state = storage.get_trial(int(node.trial_id)).state
    except Exception as e:  # unreachable, deleted, another database: train on, unattached
        state, reason = None, f"its storage could not be read ({type(e).__name__}: {e})"
    else:
        if state == optuna.trial.TrialState.RUNNING:
            return f"trial {number} of study {study!r} still runs: this run reports to it"
        reason = f"the study has closed it ({state.name})"
    node.trial_id = None
    return f"trial {number} of study {study!r}: {reason}; this run no longer reports to it"


def pruning_callback(cfg: Any) -> OptunaPruning | None:
    """The pruning callback when this job is a trial of an Optuna search (the sweeper fills
    ``optuna_trial``); None for every other run."""
    node = cfg.get("optuna_trial") if hasattr(cfg, "get") else None
    if not node or node.get("trial_id") is None:
        return None
    return OptunaPruning(
        str(node.storage),
        str(node.study_name),
        int(node.trial_id),
        str(node.monitor),
        int(node.heartbeat_interval),
    )
