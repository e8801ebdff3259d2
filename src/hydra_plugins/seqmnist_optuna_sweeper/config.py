"""The sweeper's settings (``hydra.sweeper.*``), registered as ``hydra/sweeper: optuna``."""

# No `from __future__ import annotations` here: Hydra imports plugin modules without
# registering them in sys.modules, and dataclasses then cannot resolve string annotations.
from dataclasses import dataclass, field
from typing import Any, Dict  # noqa: UP035 - OmegaConf reads typing's generics

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.seqmnist_optuna_sweeper.sweeper.OptunaSweeper"
    # tpe, random, cmaes, gp, qmc, nsgaii, bruteforce, an optuna.samplers class name, or
    # {name: ..., <keyword>: ...}; seeded with `seed` when the sampler takes one.
    sampler: Any = "tpe"
    seed: Any = 1234
    # percentile (keep the best quarter), median, hyperband, asha (successive halving over
    # epochs), none, an optuna.pruners class name,
    # or {name: ..., <keyword>: ...}.
    pruner: Any = "percentile"
    direction: str = "maximize"
    # Any Optuna storage URL (sqlite:///..., postgresql://..., mysql://...) or a journal
    # file (journal:///PATH.log); null: sqlite:///<sweep dir>/optuna.db.
    storage: Any = None
    study_name: str = "seqmnist"
    # Finished (complete or pruned) trials the study should hold; failed ones do not count.
    n_trials: int = 20
    # Trials in flight at once in this sweep (give a parallel launcher as many workers).
    n_jobs: int = 1
    # Seconds between heartbeats of running trials, and silence after which a trial whose
    # sweep died is marked failed (database storages).
    heartbeat_interval: int = 30
    grace_period: int = 120
    # Failed trials of this sweep after which it stops, naming the first error (a trial that
    # always fails, e.g. data.root=/nonexistent, would otherwise be asked for again forever).
    max_failures: int = 5
    # The search space: key -> choice(...), interval(...), tag(log, interval(...)),
    # range(...), or a fixed value.
    params: Dict[str, Any] = field(default_factory=dict)  # noqa: UP006


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="seqmnist"
)
