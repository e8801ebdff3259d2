"""Sweeps through Hydra's plugins: Optuna search, joblib and submitit launchers (tiny data)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from seqmnist.jobs.resolvers import register_resolvers
from tests.helpers import CONFIG_DIR, FAST, run_module, run_sweep


def completed_jobs(sweep_dir: Path) -> list[dict]:
    found = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]
    return [m for m in found if m["status"] == "completed"]


@pytest.mark.slow
@pytest.mark.e2e
def test_optuna_search_runs_trials_and_records_the_best(
    synthetic_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "optuna"
    # As documented: no -m needed, the search config switches Hydra to multirun itself.
    proc = run_module(
        "seqmnist.train",
        f"data.root={synthetic_root}",
        f"hydra.sweep.dir={out}",
        *FAST,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = completed_jobs(out)
    assert len(jobs) == 3
    best = yaml.safe_load((out / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(j["val/acc_best"] for j in jobs)
    # The search really varied the searched keys.
    assert len({(j["cell"], j["layers"], j["lr"]) for j in jobs}) == 3


@pytest.mark.slow
@pytest.mark.e2e
def test_joblib_runs_two_jobs_with_split_threads(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "joblib"
    proc = run_sweep(
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "cell=lstm,gru",
        root=synthetic_root,
        sweep_dir=out,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(j["cell"] for j in completed_jobs(out)) == ["gru", "lstm"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2


@pytest.mark.slow
@pytest.mark.e2e
def test_submitit_local_runs_one_job(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "submitit"
    proc = run_sweep(
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "cell=gru",
        root=synthetic_root,
        sweep_dir=out,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (job,) = completed_jobs(out)
    assert job["cell"] == "gru"


def test_slurm_launcher_config_composes() -> None:
    args = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.mem_gb=64"]
    register_resolvers()  # as the commands do
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=args, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher.partition == "gpu" and launcher.mem_gb == 64
    assert launcher.timeout_min == 60 and "submitit" in launcher._target_
