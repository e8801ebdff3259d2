"""Where a job's processes come from: the SLURM launcher sized by the trainer, ranks started
by Lightning, submitit, torchrun or srun, threads and GPUs of parallel sweep jobs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from seqmnist.core import machine
from seqmnist.core.errors import ConfigError
from seqmnist.jobs import cluster
from seqmnist.jobs.resolvers import register_resolvers
from tests.cluster import down_slurm_conf
from tests.helpers import CONFIG_DIR, compose_config


def launcher(*overrides: str):
    register_resolvers()  # as the commands do
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    return cfg.hydra.launcher


def test_slurm_job_shape_follows_the_trainer() -> None:
    gpu = launcher(
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.accelerator=gpu",
        "trainer.devices=4",
        "trainer.num_nodes=3",
    )
    assert (gpu.nodes, gpu.tasks_per_node, gpu.gpus_per_node) == (3, 4, 4)
    cpu = launcher("hydra/launcher=slurm", "trainer=ddp", "trainer.accelerator=cpu")
    assert (cpu.nodes, cpu.tasks_per_node, cpu.gpus_per_node) == (1, 2, 0)
    one = launcher("hydra/launcher=slurm")  # the default trainer: one process, one node
    assert (one.nodes, one.tasks_per_node) == (1, 1)
    local = launcher("hydra/launcher=local_ranks", "trainer=ddp", "trainer.devices=3")
    assert (local.nodes, local.tasks_per_node, local._target_.endswith("LocalLauncher")) == (
        1,
        3,
        True,
    )


def test_slurm_gpus_need_an_explicit_accelerator() -> None:
    cfg = launcher("hydra/launcher=slurm", "trainer=ddp")  # accelerator=auto
    with pytest.raises(Exception, match=r"trainer.accelerator=auto cannot say how many GPUs"):
        OmegaConf.to_container(cfg, resolve=True)


def test_num_nodes_is_a_trainer_key() -> None:
    assert compose_config("trainer.num_nodes=2").trainer.num_nodes == 2


def test_a_device_count_slurm_cannot_use_is_refused_with_the_fix() -> None:
    cfg = launcher("hydra/launcher=slurm", "trainer.devices=auto")
    with pytest.raises(Exception, match=r"trainer.devices='auto' cannot size a SLURM job"):
        OmegaConf.to_container(cfg, resolve=True)
    assert cluster.devices_per_node([0, 1]) == 2 and cluster.devices_per_node("2") == 2


def test_ddp_uses_the_gpus_where_there_are_some() -> None:
    cfg = compose_config("trainer=ddp")
    assert cfg.trainer.accelerator == "auto" and cfg.trainer.strategy == "ddp"
    assert cfg.trainer.use_distributed_sampler is False  # the data module splits the ranks


def test_ranks_lightning_starts_run_the_jobs_resolved_config(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv(cluster.RANK_CONFIG_ENV, raising=False)
    config = tmp_path / "resolved_config.yaml"

    class NoLauncher:  # a Trainer whose strategy started no processes
        class strategy:  # noqa: N801
            launcher = None

    with cluster.one_job(config, NoLauncher()):
        assert os.environ[cluster.RANK_CONFIG_ENV] == str(config)
        assert cluster.rank_config() is None  # rank 0 runs Hydra's config
        os.environ.update(MASTER_PORT="12345", LOCAL_RANK="0", WORLD_SIZE="2")  # as Lightning
        # Not monkeypatch.setenv: it would put back the "0" above after the test.
        os.environ["LOCAL_RANK"] = "1"  # what a started rank sees
        assert cluster.rank_config() == config
        os.environ["LOCAL_RANK"] = "0"
    # Cleared for the next job of a multirun, which starts its own ranks.
    for key in ("MASTER_PORT", "LOCAL_RANK", "WORLD_SIZE", cluster.RANK_CONFIG_ENV):
        assert key not in os.environ


def test_submitit_local_tasks_become_ranks(monkeypatch) -> None:
    for key in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert cluster.export_submitit_ranks() is False  # not a submitit job
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    env = {
        "SUBMITIT_LOCAL_JOB_ID": "77",
        "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_NODEID": "0",
        "SUBMITIT_LOCAL_GLOBALID": "1",
        "SUBMITIT_LOCAL_LOCALID": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from lightning.pytorch.utilities import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert cluster.export_submitit_ranks() is True
    assert (os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("1", "2")
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) > 0
    assert rank_zero_only.rank == 1  # this task does not write the run's files
    # Not monkeypatch.delenv: it would put back the values it deletes after the test.
    for key in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK"):
        del os.environ[key]


@pytest.mark.parametrize(
    ("env", "launcher_name"),
    [
        ({"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "2"}, "torchrun"),
        ({"SLURM_STEP_ID": "0", "SLURM_NTASKS": "4"}, "srun"),
    ],
)
def test_copies_started_by_torchrun_or_srun_need_one_run_dir(
    monkeypatch, env: dict, launcher_name: str
) -> None:
    for key in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "SLURM_STEP_ID", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(key, raising=False)
    cluster.check_shared_run_dir(run_dir_given=False)  # a plain run
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(
        ConfigError,
        match=f"started as several processes by {launcher_name}.*"
        "Fix: give them one, e.g. hydra.run.dir=",
    ):
        cluster.check_shared_run_dir(run_dir_given=False)
    cluster.check_shared_run_dir(run_dir_given=True)


def test_threads_follow_the_cpus_slurm_gave_the_job(monkeypatch) -> None:
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert machine.usable_cpus() == 6
    monkeypatch.setattr(cluster, "parallel_jobs", lambda: (3, 0))
    assert cluster.cpu_threads(compose_config()) == 2  # 6 CPUs over 3 parallel jobs
    assert cluster.cpu_threads(compose_config("threads=5")) == 5
    monkeypatch.setattr(cluster, "parallel_jobs", lambda: (1, 0))
    assert cluster.cpu_threads(compose_config()) == 6  # a SLURM task: all of its CPUs
    assert os.environ.pop("OMP_NUM_THREADS") == "6"  # so Lightning's DDP does not divide them
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert machine.usable_cpus() == len(os.sched_getaffinity(0))


def on_gpus(monkeypatch, lock_dir, count: int = 2) -> None:
    """A machine with ``count`` GPUs, whose sweep locks them in ``lock_dir``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(cluster, "gpu_lock_dir", lambda: lock_dir)


def start_job(monkeypatch, num: int, n_jobs: int = 2, trainer: str = "gpu"):
    """What job ``num`` of a parallel sweep does before it trains: (its config, its claim)."""
    monkeypatch.setattr(cluster, "parallel_jobs", lambda: (n_jobs, num))
    cfg = compose_config(f"trainer={trainer}")
    return cfg, cluster.spread_over_gpus(cfg)


def test_parallel_one_gpu_jobs_take_turns_over_the_gpus(tmp_path, monkeypatch) -> None:
    on_gpus(monkeypatch, tmp_path)
    cfg, claim = start_job(monkeypatch, 3, n_jobs=4)  # job 3 of 4 at once, the GPUs all free
    assert list(cfg.trainer.devices) == [1]  # its turn by number, when that GPU is free
    claim.release()
    cpu, _ = start_job(monkeypatch, 3, n_jobs=4, trainer="cpu")
    assert cpu.trainer.devices == 1  # CPU jobs are left alone
    single, _ = start_job(monkeypatch, 0, n_jobs=1)
    assert single.trainer.devices == 1  # one job at a time: Lightning's choice stands


def test_a_parallel_job_takes_a_free_gpu_not_one_its_number_shares(
    tmp_path, monkeypatch, caplog
) -> None:
    # The Optuna sweeper's slots start a trial whenever one ends: numbers 0, 2, 4 can run at
    # once on 2 GPUs, and 0 % 2 == 2 % 2 would put jobs 0 and 2 on one GPU, leaving one idle.
    on_gpus(monkeypatch, tmp_path)
    cfg0, job0 = start_job(monkeypatch, 0)
    assert list(cfg0.trainer.devices) == [0]
    cfg2, job2 = start_job(monkeypatch, 2)  # job 0 still runs
    assert list(cfg2.trainer.devices) == [1]
    with caplog.at_level(logging.WARNING, logger="seqmnist.cluster"):
        cfg4, job4 = start_job(monkeypatch, 4)  # both GPUs taken: the number rule, said
    assert list(cfg4.trainer.devices) == [0]
    assert "every GPU (2) is taken" in caplog.text and "job 4 shares GPU 0" in caplog.text
    job4.release()
    job2.release()
    job0.release()
    cfg6, job6 = start_job(monkeypatch, 6)  # a later job in this process: GPU 0 is free again
    assert list(cfg6.trainer.devices) == [0]
    job6.release()


def locked_elsewhere(path) -> bool:
    """Whether another process finds the lock file ``path`` locked (a job on another worker)."""
    probe = (
        "import fcntl, sys\n"
        "f = open(sys.argv[1], 'ab')\n"
        "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    sys.exit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", probe, str(path)], check=False).returncode == 1


def test_a_jobs_gpu_stays_its_own_until_the_job_ends_failed_or_not(tmp_path, monkeypatch) -> None:
    on_gpus(monkeypatch, tmp_path)
    cfg, claim = start_job(monkeypatch, 1)
    assert list(cfg.trainer.devices) == [1]
    lock = tmp_path / "gpu1.lock"
    with pytest.raises(RuntimeError, match="the job failed"), claim:
        assert locked_elsewhere(lock)  # the other workers' jobs keep off it while it runs
        raise RuntimeError("the job failed")
    assert not locked_elsewhere(lock)  # ended, if by failure: free for the next job
    claim.release()  # a second release is harmless
    with start_job(monkeypatch, 3)[1]:  # the next job of this worker process takes it again
        assert locked_elsewhere(lock)
    assert not locked_elsewhere(lock)


def test_the_jobs_of_one_sweep_lock_gpus_in_one_local_folder(tmp_path, monkeypatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the machine's temp dir
    compose_config(f"hydra.sweep.dir={tmp_path / 'sweep'}")
    first = cluster.gpu_lock_dir()
    compose_config(f"hydra.sweep.dir={tmp_path / 'sweep'}")  # another job of that sweep
    assert cluster.gpu_lock_dir() == first and first.is_dir()
    assert first.is_relative_to(tmp_path) and not first.is_relative_to(tmp_path / "sweep")
    compose_config(f"hydra.sweep.dir={tmp_path / 'other'}")  # another sweep: its own locks
    assert cluster.gpu_lock_dir() != first


# -- SLURM: requeue after the time limit, and the checks before a sweep submits -----------
def test_only_a_batch_job_stopped_by_its_time_limit_is_requeued(monkeypatch) -> None:
    import signal

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert not cluster.requeue_job(signal.SIGUSR2)  # not a SLURM job
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("ENVIRONMENT", "INTERACTIVE")  # salloc/srun from a shell
    assert not cluster.requeue_job(signal.SIGUSR2)
    monkeypatch.setenv("ENVIRONMENT", "BATCH")
    assert not cluster.requeue_job(signal.SIGTERM)  # scancel, kill: stays stopped
    assert not cluster.requeue_job(signal.SIGUSR2, enabled=False)  # requeue=false
    monkeypatch.setenv("SLURM_PROCID", "1")
    # The first task asks SLURM; the others leave it to it.
    assert cluster.requeue_job(signal.SIGUSR1) is cluster.Requeue.BY_FIRST_TASK


def test_a_requeued_job_continues_from_its_last_checkpoint(tmp_path, monkeypatch) -> None:
    from seqmnist.core.rundir import RunDir

    run = RunDir(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("ENVIRONMENT", "BATCH")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert cluster.requeued_checkpoint(run) is None  # stopped before its first checkpoint
    run.last_ckpt.parent.mkdir(parents=True)
    run.last_ckpt.write_bytes(b"")
    assert cluster.requeued_checkpoint(run) == run.last_ckpt
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # its first start: a new run
    assert cluster.requeued_checkpoint(run) is None


def test_a_slurm_cluster_that_does_not_answer_is_one_message_with_the_fix(
    tmp_path, monkeypatch
) -> None:
    from seqmnist.jobs.preflight import check_slurm

    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "nowhere" / "slurm.conf"))
    with pytest.raises(ConfigError, match=r"SLURM_CONF=.*nowhere.*no such file.*make cluster-up"):
        check_slurm(launcher("hydra/launcher=slurm", "trainer.accelerator=cpu"))

    monkeypatch.setenv("SLURM_CONF", str(down_slurm_conf(tmp_path)))
    with pytest.raises(ConfigError, match=r"(does not answer|is not installed).*make cluster-up"):
        check_slurm(launcher("hydra/launcher=slurm", "trainer.accelerator=cpu"))


@pytest.mark.parametrize(
    ("overrides", "env", "ranks"),
    [
        (["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], {}, 2),
        (["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=4"], {}, 4),
        (["trainer=ddp", "trainer.accelerator=cpu", "trainer.num_nodes=2"], {}, 1),
        (["trainer=cpu"], {}, 1),
        (["trainer=cpu"], {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_NTASKS": "2"}, 2),
        (["trainer=ddp", "trainer.accelerator=cpu"], {"SLURM_CPUS_PER_TASK": "4"}, 1),
    ],
)
def test_local_cpu_ranks_split_the_cores_between_them(
    monkeypatch, caplog, overrides: list[str], env: dict, ranks: int
) -> None:
    for key in ("SUBMITIT_EXECUTOR", "SUBMITIT_LOCAL_NTASKS", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(cluster, "usable_cpus", lambda: 8)
    monkeypatch.setattr(cluster, "parallel_jobs", lambda: (1, 0))
    cfg = compose_config(*overrides)
    assert cluster.cpu_ranks_here(cfg) == ranks
    with caplog.at_level("INFO", logger="seqmnist.cluster"):
        threads = cluster.cpu_threads(cfg)
    if "SLURM_CPUS_PER_TASK" in env:
        assert threads == 8 and os.environ.pop("OMP_NUM_THREADS") == "8"
    elif ranks == 1:
        assert threads is None  # torch's own default: all of the process's cores
    else:
        assert threads == 8 // ranks
        said = f"{ranks} CPU ranks share this machine's 8 cores: {threads} torch threads each"
        assert said in caplog.text
    # With two parallel jobs of a sweep as well, each rank gets its share of its job's share.
    monkeypatch.setattr(cluster, "parallel_jobs", lambda: (2, 0))
    if "SLURM_CPUS_PER_TASK" not in env:
        assert cluster.cpu_threads(cfg) == 8 // (2 * ranks)
