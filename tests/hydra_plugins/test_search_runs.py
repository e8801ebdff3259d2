"""Real searches, run as a user runs them (tiny synthetic data): pruning, the best trial and
its plots, bad input before any trial, a search that runs out of settings or keeps failing."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from seqmnist.jobs.search import open_storage
from tests.cluster import SLURM, cluster_env, sacct_states, slurm_job_ids
from tests.helpers import ONE_THREAD, run_module
from tests.hydra_plugins.searches import (
    finished,
    postgres_study,
    search,
    study_of,
)


# -- e2e: real searches ------------------------------------------------------------------------
@pytest.mark.e2e
def test_a_pruned_trial_says_so_and_the_search_finishes(
    synthetic_root: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    # A threshold no tiny model reaches: every trial is pruned after its first epoch.
    proc = run_module(
        *search(
            synthetic_root,
            sweep,
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.pruner={name:ThresholdPruner,lower:0.99}",
        ),
        env=ONE_THREAD,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    study = study_of(sweep)
    assert [t.state for t in study.get_trials()] == [TrialState.PRUNED] * 3
    for job in ("0", "1", "2"):
        m = json.loads((sweep / job / "metrics.json").read_text())
        assert m["status"] == "pruned" and m["pruned_at_epoch"] == 0 and m["epochs"] == 1
        assert "test/acc" not in m  # a pruned trial is not tested
        assert list((sweep / job / "checkpoints").glob("*.ckpt"))  # its checkpoints are kept
    results = (sweep / "optimization_results.yaml").read_text()
    assert "pruned: 3" in results and "complete: 0" in results
    report = (sweep / "results.md").read_text()
    assert "| state |" in report and report.count("| pruned |") == 3
    assert "Traceback" not in out and "ExperimentalWarning" not in out


@pytest.mark.e2e
def test_a_completed_search_writes_its_best_trial_and_plots(
    synthetic_root: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    proc = run_module(
        *search(
            synthetic_root,
            sweep,
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.pruner=none",
            "hydra.sweeper.sampler=random",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "hydra.sweeper.n_jobs=2",
        ),
        env=ONE_THREAD,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    study = study_of(sweep)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3
    best = study.best_trial
    import yaml

    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == best.value and results["best_params"] == best.params
    assert results["trials"] == {
        "complete": 3,
        "pruned": 0,
        "failed": 0,
        "not_run": 0,
        "running": 0,
    }
    jobs = [
        json.loads((sweep / str(t.number) / "metrics.json").read_text()) for t in study.get_trials()
    ]
    assert [j["val/acc_best"] for j in jobs] == [t.value for t in study.get_trials()]
    assert (sweep / "optuna_history.png").stat().st_size > 1000
    assert (sweep / "optuna_importances.png").stat().st_size > 1000


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["hydra.sweeper.sampler=annealing"], "hydra.sweeper.sampler='annealing'"),
        (["nlayers=choice(1,2)"], "hydra.sweeper.params.nlayers: no such key"),
        (["hydra.sweeper.params.layers='choice(1,'"], "is not a search-space expression"),
        (["hydra.sweeper.heartbeat_interval=0"], "heartbeat_interval=0 must be an integer >= 1"),
        (["hydra.sweeper.max_failures=0"], "max_failures=0 must be an integer >= 1"),
        (
            # Without the check that the cluster answers (tests/jobs/test_slurm.py), which
            # comes first: this one is about the storage, and runs where no cluster is up.
            [
                "hydra/launcher=slurm",
                "hydra.sweeper.storage=sqlite:///x.db",
                "~hydra.callbacks.slurm_preflight",
            ],
            "SQLite's file locks are unreliable on the network file systems",
        ),
    ],
)
def test_bad_input_stops_before_any_trial(  # each kind in-process above; here the exit
    synthetic_root: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    sweep = tmp_path / "sweep"
    proc = run_module(*search(synthetic_root, sweep, *args), env=ONE_THREAD)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert needle in out and "Traceback" not in out
    assert not list(sweep.glob("*/metrics.json"))  # no trial ran


# Everything the default space searches, fixed but the cell: a space of two settings.
TWO_SETTINGS = [
    "cell=choice(lstm,gru)",
    "layers=1",
    "dropout=0.0",
    "optimizer=adam",
    "optimizer.lr=0.01",
]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("sampler", "says"),
    [
        ("tpe", "the search space holds 2 settings and all have run"),
        ("bruteforce", "the search space holds 2 settings and all have run"),
    ],
)
def test_a_search_that_has_run_its_whole_space_ends_with_a_message(
    synthetic_root: Path, tmp_path: Path, sampler: str, says: str
) -> None:
    """A choice-only space smaller than n_trials crashed on a trial
    it had already failed (UpdateFinishedTrialError); a grid sampler's study.stop() raised
    outside optimize(). Both now end the search, with their results written."""
    sweep = tmp_path / "sweep"
    args = [*TWO_SETTINGS, "hydra.sweeper.n_trials=5", f"hydra.sweeper.sampler={sampler}"]
    proc = run_module(*search(synthetic_root, sweep, *args), env=ONE_THREAD)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert says in out and "Traceback" not in out
    ran = finished(study_of(sweep))
    assert sorted(t.params["cell"] for t in ran) == ["gru", "lstm"]
    assert "complete: 2" in (sweep / "optimization_results.yaml").read_text()


@pytest.mark.e2e
def test_a_search_whose_trials_keep_failing_stops_and_names_the_first_error(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """Failed trials counted nowhere, so a search whose every trial fails
    (no data here) asked for trials forever."""
    sweep = tmp_path / "sweep"
    args = ["hydra.sweeper.n_trials=10", "hydra.sweeper.max_failures=2", "data.download=false"]
    proc = run_module(*search(tmp_path / "nothing", sweep, *args), env=ONE_THREAD, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "2 trials failed (hydra.sweeper.max_failures=2); the first: trial 0:" in out
    assert "data not found" in out
    study = study_of(sweep)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL] * 2
    assert "failed: 2" in (sweep / "optimization_results.yaml").read_text()


@pytest.mark.e2e
def test_a_study_with_the_other_direction_is_left_alone(
    synthetic_root: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    url = f"sqlite:///{sweep / 'optuna.db'}"
    study = optuna.create_study(
        study_name="seqmnist", storage=open_storage(url), direction="minimize"
    )
    study.tell(study.ask(), 0.25)
    proc = run_module(*search(synthetic_root, sweep), env=ONE_THREAD)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "already exists and minimizes" in out and "Traceback" not in out
    kept = study_of(sweep).get_trials()
    assert [t.value for t in kept] == [0.25]  # nothing of the existing study lost


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize(
    "launcher", ["submitit_local", pytest.param("slurm", marks=pytest.mark.cluster)]
)
def test_pruning_reaches_jobs_run_by_submitit(
    synthetic_root: Path, tmp_path: Path, launcher: str
) -> None:
    """submitit runs each trial in its own process (on SLURM, as an sbatch job of the local
    cluster, the study in its PostgreSQL): the job finds its trial in the storage."""
    sweep = tmp_path / "sweep"
    env, name, on_cluster = dict(ONE_THREAD), "seqmnist", []
    url = None
    if launcher == "slurm":
        url, name = postgres_study()
        env.update(cluster_env())
        on_cluster = [
            *SLURM[1:],
            f"hydra.sweeper.storage={url}",
            f"hydra.sweeper.study_name={name}",
        ]
    proc = run_module(
        *search(
            synthetic_root,
            sweep,
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=2",
            f"hydra/launcher={'slurm' if launcher == 'slurm' else 'submitit_local'}",
            "hydra.launcher.timeout_min=5",
            "hydra.sweeper.pruner={name:ThresholdPruner,lower:0.99}",
            *on_cluster,
        ),
        env=env,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert [t.state for t in study_of(sweep, url, name).get_trials()] == [TrialState.PRUNED] * 2
    if launcher == "slurm":  # each trial an sbatch job that SLURM ran to its end
        jobs = slurm_job_ids(sweep)
        assert len(jobs) == 2 and set(sacct_states(jobs, env).values()) == {"COMPLETED"}
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "pruned"


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize(
    # submitit_local takes the same path as slurm (one launch a thread); its lost job is
    # test_search_faults.py's.
    "launcher",
    ["joblib", pytest.param("slurm", marks=pytest.mark.cluster)],
)
def test_a_freed_slot_starts_the_next_trial_while_a_slow_one_runs(
    synthetic_root: Path, tmp_path: Path, launcher: str
) -> None:
    """Trials were launched n_jobs at a time and a batch waited for its
    slowest trial, so trial 2 started only after the slow trial 0 ended. Now each slot is
    filled the moment its trial ends: trials 1, 2 and 3 run while trial 0 is still running.
    Trial 0 is held until trial 3's job has started, for at most 10 steps of 15 s: batched
    launches would start trial 2 only after those 150 s."""
    sweep = tmp_path / "sweep"
    env, url, name, extra = dict(ONE_THREAD), None, "seqmnist", []
    if launcher == "slurm":
        url, name = postgres_study()
        env.update(cluster_env())
        extra = [*SLURM, f"hydra.sweeper.storage={url}", f"hydra.sweeper.study_name={name}"]
    else:
        extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    proc = run_module(
        *search(
            synthetic_root,
            sweep,
            "hydra.sweeper.n_trials=4",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.pruner=none",
            "+callbacks.slow._target_=tests.helpers.SlowSteps",
            "+callbacks.slow.seconds=15",
            "+callbacks.slow.job=0",
            f"+callbacks.slow.until={sweep / '3'}",
            *extra,
        ),
        env=env,
        timeout=400,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    trials = {t.number: t for t in study_of(sweep, url, name).get_trials()}
    assert sorted(trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials.values())
    slow_end = trials[0].datetime_complete
    # Trial 1's slot took trial 2, then trial 3, while trial 0 still ran.
    assert trials[3].datetime_start < slow_end, {n: t.datetime_start for n, t in trials.items()}
