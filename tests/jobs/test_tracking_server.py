"""Tracking on a real MLflow server (``make cluster-up``: backed by PostgreSQL, with an
artifact folder it serves) from the SLURM jobs of a sweep, read back through its client."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.cluster import cluster_env, sweep_on_slurm
from tests.helpers import best_ckpt, metrics_of

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]
mlflow = pytest.importorskip("mlflow", reason="the tracking extra: make install-extras")


def test_a_sweeps_slurm_jobs_log_runs_params_metrics_and_checkpoints_to_the_server(
    synthetic_root: Path, tmp_path: Path
) -> None:
    cluster = cluster_env()
    sweep = tmp_path / f"sweep-{uuid.uuid4().hex[:8]}"  # an experiment of its own on the server
    proc = sweep_on_slurm(
        synthetic_root, sweep, "cell=lstm,gru", "logger=[tensorboard,mlflow]", env=cluster
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    client = mlflow.tracking.MlflowClient(tracking_uri=cluster["MLFLOW_TRACKING_URI"])
    # Named as a user looks for it (the task and the sweep), its path a tag.
    experiment = client.get_experiment_by_name(f"train/{sweep.name}")
    assert experiment is not None and experiment.tags["sweep_dir"] == str(sweep.resolve())
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server's store
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["cell"] for r in runs) == ["gru", "lstm"]
    for run in runs:
        job = sweep / ("0" if run.data.params["cell"] == "lstm" else "1")
        m = metrics_of(job)
        assert m["tracking"]["mlflow"] == run.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test/acc"] == pytest.approx(m["test/acc"])
        assert "val/acc" in run.data.metrics and "train/loss" in run.data.metrics
        ckpts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
        assert ckpts == [f"checkpoints/{best_ckpt(job).name}"]
        got = Path(client.download_artifacts(run.info.run_id, ckpts[0], str(tmp_path)))
        assert got.read_bytes() == best_ckpt(job).read_bytes()  # through the server, whole
        results = client.list_artifacts(run.info.run_id, "results")
        assert [a.path for a in results] == ["results/metrics.json"]
