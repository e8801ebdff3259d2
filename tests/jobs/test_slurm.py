"""Jobs on a real SLURM cluster (``make cluster-up``: slurmctld, slurmdbd and two slurmd of
one CPU each on this machine): sweeps through ``hydra/launcher=slurm``, DDP across the two
nodes, and what is refused before anything is submitted. The time limit and ``scancel``:
test_slurm_requeue.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.cluster import (
    down_slurm_conf,
    sacct_states,
    slurm_job_ids,
    sweep_on_slurm,
)
from tests.helpers import FAST, ONE_THREAD, metrics_of, run_module
from tests.jobs.test_ddp import final_state
from tests.training.test_faults import SAME

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]

DDP = ["trainer=ddp", "trainer.accelerator=cpu"]


def test_a_sweep_runs_as_sbatch_jobs_and_a_failing_job_is_reported(
    synthetic_root: Path, tmp_path: Path, cluster: dict[str, str]
) -> None:
    sweep = tmp_path / "sweep"
    proc = sweep_on_slurm(synthetic_root, sweep, "cell=lstm,gru", env=cluster)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    ids = slurm_job_ids(sweep)
    assert len(ids) == 2  # one sbatch job a setting
    assert set(sacct_states(ids, cluster).values()) == {"COMPLETED"}
    for job, cell in (("0", "lstm"), ("1", "gru")):
        m = metrics_of(sweep / job)
        assert m["status"] == "completed" and m["cell"] == cell
        assert m["world_size"] == 1 and m["nodes"][0] in ("n1", "n2")  # a node of the cluster
    report = (sweep / "results.md").read_text()
    assert report.count("| complete |") == 2

    # dropout=1.5 is refused by the job that gets it; the other job completes.
    failing = tmp_path / "failing"
    proc = sweep_on_slurm(synthetic_root, failing, "dropout=0,1.5", env=cluster)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    assert metrics_of(failing / "0")["status"] == "completed"
    bad = metrics_of(failing / "1")
    assert bad["status"] == "failed" and "dropout" in bad["error"]
    report = (failing / "results.md").read_text()
    assert "| complete |" in report and "| failed |" in report and "dropout" in report


def test_ddp_across_two_nodes_equals_the_same_ranks_on_one_machine(
    synthetic_root: Path, tmp_path: Path, cluster: dict[str, str]
) -> None:
    """One rank on n1, one on n2 (Lightning's SLURM environment, gloo), against the same
    two-rank layout started by submitit's local executor."""
    on_slurm = tmp_path / "slurm"
    proc = sweep_on_slurm(
        synthetic_root,
        on_slurm,
        *DDP,
        "trainer.num_nodes=2",
        "trainer.devices=1",
        "hidden=32",
        env=cluster,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    local = tmp_path / "local"
    proc = run_module(
        "seqmnist.train",
        "-m",
        f"data.root={synthetic_root}",
        f"hydra.sweep.dir={local}",
        *FAST,
        "hydra/launcher=local_ranks",
        *DDP,
        "trainer.devices=2",
        "hidden=32",
        env=ONE_THREAD,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    m_slurm, m_local = metrics_of(on_slurm / "0"), metrics_of(local / "0")
    assert m_slurm["world_size"] == m_local["world_size"] == 2
    assert m_slurm["nodes"] == ["n1", "n2"]  # rank 0 on n1, rank 1 on n2
    assert len(set(m_local["nodes"])) == 1  # both ranks on this machine
    for key in SAME:
        assert m_slurm[key] == m_local[key], key
    a, b = final_state(on_slurm / "0"), final_state(local / "0")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the weights differ"


def test_more_nodes_than_the_cluster_has_is_refused_before_anything_is_submitted(
    synthetic_root: Path, tmp_path: Path, cluster: dict[str, str]
) -> None:
    sweep = tmp_path / "sweep"
    proc = sweep_on_slurm(
        synthetic_root, sweep, *DDP, "trainer.num_nodes=3", "trainer.devices=1", env=cluster
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "ask for 3 nodes (trainer.num_nodes) and the default partition has 2" in out
    assert "Traceback" not in out and not sweep.exists()  # nothing submitted, nothing made
    down = sweep_on_slurm(
        synthetic_root, sweep, env={**cluster, "SLURM_CONF": str(down_slurm_conf(tmp_path))}
    )
    out = down.stdout + down.stderr
    assert down.returncode == 2 and "the SLURM cluster does not answer" in out, out[-3000:]
    assert not sweep.exists()
