"""What the e2e tests of the Optuna sweeper share: the tiny search they run as a user would,
and how they read its study."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
from optuna.trial import TrialState

from seqmnist.jobs.search import open_storage
from tests.helpers import FAST, ONE_THREAD, PROJECT_ROOT, user_env

# A few steps a trial, two epochs, one thread: seconds per trial. The search space is the
# project's default (conf/hparams_search/optuna.yaml).
SEARCH = [
    *(o for o in FAST if not o.startswith("trainer.max_epochs")),
    "trainer.max_epochs=2",
    "hparams_search=optuna",
    "hydra.sweeper.heartbeat_interval=1",
    "hydra.sweeper.grace_period=2",
]


def search(root: Path, sweep: Path, *args: str) -> list[str]:
    return ["seqmnist.train", f"data.root={root}", f"hydra.sweep.dir={sweep}", *SEARCH, *args]


def study_of(sweep: Path, url: str | None = None, name: str = "seqmnist") -> optuna.Study:
    storage = open_storage(url or f"sqlite:///{sweep / 'optuna.db'}")
    return optuna.load_study(study_name=name, storage=storage)


def postgres_study() -> tuple[str, str]:
    """(URL, a study name of its own) on the local cluster's PostgreSQL server, which keeps
    the studies of every test run: each test names a new one."""
    from tests.cluster import cluster_env

    return cluster_env()["SEQMNIST_PG_URL"], f"test-{uuid.uuid4().hex[:12]}"


# The environment variable of the local cluster's env.sh that holds the password of its
# PostgreSQL role that must give one (scripts/local_cluster.sh).
PG_PASSWORD_ENV = "SEQMNIST_PG_PASSWORD"


def password_study(cluster: dict[str, str]) -> tuple[str, str, str, str]:
    """On the local cluster's PostgreSQL, as its role that must give its password (over TCP,
    scram-sha-256): (the storage URL as a user types it, its password taken from the
    environment by ``${oc.env:SEQMNIST_PG_PASSWORD}``; the URL with the password, for the
    test's own look at the study; the password; a study name of its own)."""
    import pytest
    from sqlalchemy.engine import make_url

    bare, password = cluster.get("SEQMNIST_PG_PASSWORD_URL"), cluster.get(PG_PASSWORD_ENV)
    if not bare or not password:
        pytest.skip(
            "the local cluster has no PostgreSQL role with a password: its env.sh was written "
            "before it had one. Fix: make cluster-up (on a running cluster it adds the role)"
        )
    url = make_url(bare)
    typed = (
        f"{url.drivername}://{url.username}:${{oc.env:{PG_PASSWORD_ENV}}}"
        f"@{url.host}:{url.port}/{url.database}"
    )
    full = url.set(password=password).render_as_string(hide_password=False)
    return typed, full, password, f"test-{uuid.uuid4().hex[:12]}"


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def distinct_params(trials: list[optuna.trial.FrozenTrial]) -> bool:
    seen = [json.dumps(t.params, sort_keys=True) for t in trials]
    return len(seen) == len(set(seen))


def start_search(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=PROJECT_ROOT,
        env=user_env(ONE_THREAD),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
