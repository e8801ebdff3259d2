"""What a sweep's SLURM jobs get beside their config: the environment variables they read
(sbatch --export, whatever the submitting shell's SBATCH_EXPORT), the MLflow tracking URI
the sweep chose, and no SQLite tracking store that every job of a SLURM array would write."""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from seqmnist.jobs import preflight
from seqmnist.jobs.resolvers import register_resolvers
from seqmnist.jobs.search import PASSWORD_ENV
from tests.helpers import CONFIG_DIR

SECRET = "pw-never-written-4711"
SERVER = "http://tracker.example:5000"
ON_SLURM = ("hydra/launcher=slurm", "trainer.accelerator=cpu")


def sweep_config(*overrides: str) -> DictConfig:
    """The config a ``-m`` command's callbacks get (Hydra's node included)."""
    register_resolvers()  # as the commands do
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@contextmanager
def config_loader() -> Iterator:
    """Hydra's own config loader, as the sweep and each launched job use it."""
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def keep_submitit_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """The preflight may set up how the sweep waits on its jobs, for the process; a test's
    sweep ends with the test."""
    from submitit.slurm.slurm import SlurmJob

    monkeypatch.setattr(SlurmJob, "watcher", SlurmJob.watcher)


@pytest.fixture
def no_cluster_check(monkeypatch: pytest.MonkeyPatch) -> list:
    """The cluster checks of the preflight, recorded instead of run (no cluster needed)."""
    checked: list = []
    monkeypatch.setattr(preflight, "check_slurm", checked.append)
    monkeypatch.delenv("SBATCH_EXPORT", raising=False)
    keep_submitit_as_it_is(monkeypatch)
    return checked


def test_a_slurm_job_is_sent_the_variables_it_reads_by_name_never_their_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from submitit.slurm.slurm import _make_sbatch_string

    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SERVER)
    launcher = sweep_config(*ON_SLURM).hydra.launcher
    params = OmegaConf.to_container(launcher.additional_parameters, resolve=True)
    assert params["requeue"] is True  # kept
    names = params["export"].split(",")
    # ALL: the job's environment is still the submitting shell's; the names make sure of these
    # wherever sbatch's default is NONE.
    assert names[0] == "ALL"
    needed = {
        PASSWORD_ENV,
        "MLFLOW_TRACKING_URI",
        "SEQMNIST_DATA_ROOT",
        "SEQMNIST_PROJECT_ROOT",
        "WANDB_API_KEY",
        "WANDB_MODE",
        "SLURM_CONF",
    }
    assert needed <= set(names[1:])
    assert all(re.fullmatch(r"[A-Z_][A-Z0-9_]*", n) for n in names)  # NAME, never NAME=value
    # The sbatch script submitit writes holds the names, and no secret.
    script = _make_sbatch_string(command="true", folder=tmp_path, additional_parameters=params)
    assert f"#SBATCH --export={params['export']}\n" in script
    assert SECRET not in script and SECRET not in OmegaConf.to_yaml(launcher, resolve=True)


def test_an_sbatch_export_in_the_submitting_environment_cannot_keep_them_from_the_jobs(
    monkeypatch: pytest.MonkeyPatch, no_cluster_check: list
) -> None:
    # sbatch takes SBATCH_EXPORT over the script's own #SBATCH --export line: a site's (or a
    # user's) NONE would leave the jobs without the password, the tracking URI, the data.
    monkeypatch.setenv("SBATCH_EXPORT", "NONE")
    cfg = sweep_config(*ON_SLURM)
    preflight.SlurmPreflight().on_multirun_start(config=cfg)
    assert os.environ["SBATCH_EXPORT"] == cfg.hydra.launcher.additional_parameters.export
    assert no_cluster_check == [cfg.hydra.launcher]


def test_a_slurm_job_logs_where_its_sweep_chose_even_without_the_variable(
    monkeypatch: pytest.MonkeyPatch, no_cluster_check: list
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SERVER)
    with config_loader() as loader:
        sweep = loader.load_configuration(
            "train", [*ON_SLURM, "logger=mlflow"], run_mode=RunMode.MULTIRUN
        )
        preflight.SlurmPreflight().on_multirun_start(config=sweep)
        shipped = pickle.loads(pickle.dumps(sweep))  # as submitit hands it to each job
        monkeypatch.delenv("MLFLOW_TRACKING_URI")  # a compute node without the variable
        # What the job runs with: the sweep's command line and the job's own overrides.
        job = loader.load_sweep_config(shipped, [*shipped.hydra.overrides.task, "cell=gru"])
    assert job.model.net.cell == "gru"
    assert job.logger.mlflow.tracking_uri == SERVER
    assert job.logger.mlflow.artifact_location is None  # the server's, not a folder of ours


def test_an_sqlite_tracking_store_is_refused_before_a_slurm_sweep_submits(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    no_cluster_check: list,
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep_dir = tmp_path / "sweep"
    for logger in ("logger=mlflow", "logger=[tensorboard,mlflow]"):
        cfg = sweep_config(*ON_SLURM, logger, f"hydra.sweep.dir={sweep_dir}")
        caplog.clear()
        with caplog.at_level(logging.ERROR, "seqmnist.slurm"), pytest.raises(SystemExit) as e:
            preflight.SlurmPreflight().on_multirun_start(config=cfg)
        assert e.value.code == 2
        said = " ".join(caplog.messages)
        assert re.search(
            r"logger.mlflow.tracking_uri=sqlite:///.*mlflow.db.*SLURM.*Fix: .*make cluster-up, "
            r"then source outputs/cluster/env.sh.*logger.mlflow.tracking_uri=http://",
            said,
        ), said
    assert no_cluster_check == []  # refused before the cluster is asked anything
    assert not sweep_dir.exists()


def test_the_tracking_check_leaves_other_launchers_and_servers_alone(
    monkeypatch: pytest.MonkeyPatch, no_cluster_check: list
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for launcher in ([], ["hydra/launcher=joblib"], ["hydra/launcher=local_ranks"]):
        cfg = sweep_config(*launcher, "logger=mlflow")
        preflight.SlurmPreflight().on_multirun_start(config=cfg)  # no exit
        assert cfg.logger.mlflow.tracking_uri.startswith("sqlite:///")
    assert no_cluster_check == []
    served = sweep_config(*ON_SLURM, "logger=mlflow", f"logger.mlflow.tracking_uri={SERVER}")
    preflight.SlurmPreflight().on_multirun_start(config=served)
    assert no_cluster_check == [served.hydra.launcher]  # on to the cluster's checks
    plain = sweep_config(*ON_SLURM)  # no MLflow: nothing to refuse
    preflight.SlurmPreflight().on_multirun_start(config=plain)
    assert len(no_cluster_check) == 2


@pytest.mark.cluster
@pytest.mark.e2e  # a real sbatch array on the local cluster
@pytest.mark.slow
def test_slurm_jobs_get_the_variables_where_the_submitting_shell_exports_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real sbatch jobs of the local cluster, submitted as the SLURM launcher submits them,
    from a shell with SBATCH_EXPORT=NONE (as some sites set it)."""
    import submitit

    from tests.cluster import SLURM, cluster_env, wait_for

    env = cluster_env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SBATCH_EXPORT", "NONE")
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    keep_submitit_as_it_is(monkeypatch)
    cfg = sweep_config(*SLURM, "trainer.accelerator=cpu")
    preflight.SlurmPreflight().on_multirun_start(config=cfg)  # the real cluster checks
    params = OmegaConf.to_container(cfg.hydra.launcher.additional_parameters, resolve=True)
    executor = submitit.SlurmExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(additional_parameters=params, cpus_per_task=1, time=5)
    names = [PASSWORD_ENV, "MLFLOW_TRACKING_URI", "SLURM_CONF"]
    jobs = executor.map_array(os.getenv, names)  # an array, as a sweep's jobs are
    wait_for(lambda: all(j.done() for j in jobs), 180, "the jobs")
    assert [j.result() for j in jobs] == [SECRET, env["MLFLOW_TRACKING_URI"], env["SLURM_CONF"]]
    scripts = list((tmp_path / "submitit").rglob("*.sh"))
    assert scripts and all(SECRET not in s.read_text() for s in scripts)
