"""A training job as one trial of an Optuna study: samplers, pruners and storages by name, and
the callback that reports the monitored metric (``optuna_trial.monitor``) after each
validation epoch and stops a losing trial.

The job reaches its trial through the study's storage (a database or a journal file), never
through the memory of the process that asked for it, so pruning works under every launcher:
in-process, joblib workers, submitit and SLURM jobs on other machines.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L

from seqmnist.core.errors import ConfigError

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
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "asha": "SuccessiveHalvingPruner",
    "none": "NopPruner",
}
# Where each pruner starts judging: the median pruner once three trials have set a standard,
# from the first epoch on; hyperband runs successive halving from one epoch up, keeping a
# third at each rung. (make search-compare measured the choice: README "Hyper-parameter
# search".)
PRUNER_DEFAULTS: dict[str, dict[str, Any]] = {
    "MedianPruner": {"n_startup_trials": 3, "n_warmup_steps": 0},
    # Keeps the best quarter of the trials at each epoch: more aggressive than the median.
    "PercentilePruner": {"percentile": 25.0, "n_startup_trials": 3, "n_warmup_steps": 0},
    "HyperbandPruner": {"min_resource": 1, "reduction_factor": 3},
    "SuccessiveHalvingPruner": {"min_resource": 1, "reduction_factor": 3},
}
STUDY_PRUNER_ATTR = "seqmnist:pruner"  # the study's pruner spec, read back by every job


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


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None):
    """An Optuna storage: ``sqlite:///file.db`` (and any SQLAlchemy URL) or a journal file
    (``journal:///path`` or a path ending in ``.log``) on a shared file system.

    Raises :class:`ConfigError` naming the URL when it is malformed, its driver is missing or
    the database cannot be reached.
    """
    import optuna
    import sqlalchemy.exc

    quiet_optuna()
    if url.startswith("journal://") or url.endswith((".log", ".journal")):
        path = Path(url.removeprefix("journal://")).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
        except OSError as e:
            raise ConfigError(
                f"hydra.sweeper.storage={url}: cannot open the journal ({e})"
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
        raise ConfigError(f"hydra.sweeper.storage={url}: its tables could not be created")
    except ImportError as e:  # Optuna re-raises a missing driver as a plain ImportError
        missing = getattr(e.__cause__, "name", None) or "the driver"
        raise ConfigError(
            f"hydra.sweeper.storage={url}: its database driver is not installed ({missing}). "
            "Fix: pip install it (pip install -e '.[postgres]' for postgresql://, pymysql for "
            "mysql+pymysql://), or use sqlite:///FILE or a journal file."
        ) from None
    except sqlalchemy.exc.ArgumentError as e:
        raise ConfigError(
            f"hydra.sweeper.storage={url!r} is not a storage URL ({e}). Fix: sqlite:///PATH.db, "
            "postgresql://USER:PASSWORD@HOST/DB, mysql+pymysql://..., or a journal file "
            "journal:///PATH.log."
        ) from None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.DBAPIError) as e:
        reason = " ".join(str(e.orig if hasattr(e, "orig") else e).split())[:200]
        raise ConfigError(
            f"hydra.sweeper.storage={url}: the database cannot be reached ({reason}). Fix: "
            "check the host, port, credentials and that the server runs."
        ) from None


class OptunaPruning(L.Callback):
    """Reports ``monitor`` to the job's trial after each validation epoch; when the study's
    pruner says the trial is losing, the run stops at the end of that epoch.

    Only rank 0 talks to the storage; under DDP its verdict is broadcast so every rank stops.
    """

    def __init__(self, storage: str, study_name: str, trial_id: int, monitor: str) -> None:
        self.storage = storage
        self.study_name = study_name
        self.trial_id = int(trial_id)
        self.monitor = monitor
        self.pruned_at_epoch: int | None = None
        self._trial: optuna.trial.Trial | None = None

    def _open(self) -> optuna.trial.Trial:
        if self._trial is None:
            import optuna

            storage = open_storage(self.storage)
            study = optuna.load_study(study_name=self.study_name, storage=storage)
            study.pruner = make_pruner(study.user_attrs.get(STUDY_PRUNER_ATTR, "none"))
            self._trial = optuna.trial.Trial(study, self.trial_id)
        return self._trial

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None and math.isfinite(float(value)):
                trial = self._open()
                trial.report(float(value), step=trainer.current_epoch)
                prune = trial.should_prune()
        prune = trainer.strategy.broadcast(prune)
        if prune:
            self.pruned_at_epoch = trainer.current_epoch
            trainer.should_stop = True


def pruning_callback(cfg: Any) -> OptunaPruning | None:
    """The pruning callback when this job is a trial of an Optuna search (the sweeper fills
    ``optuna_trial``); None for every other run."""
    node = cfg.get("optuna_trial") if hasattr(cfg, "get") else None
    if not node or node.get("trial_id") is None:
        return None
    return OptunaPruning(
        str(node.storage), str(node.study_name), int(node.trial_id), str(node.monitor)
    )
