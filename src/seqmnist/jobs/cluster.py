"""Where a job's processes come from and what they share: DDP ranks started by Lightning,
by torchrun, by SLURM or by submitit; threads and GPUs for parallel jobs of a sweep.

- Lightning starts DDP ranks > 0 by running the command line again. In a Hydra multirun
  that line holds the whole sweep, so each rank would run its own sweep. :func:`one_job`
  points the ranks it starts at this job's resolved config instead (``train.py`` runs
  that file when started as such a rank), and clears what Lightning leaves behind
  (environment variables, the process group) so the next job starts ranks of its own.
- submitit's local executor starts ``tasks_per_node`` processes itself, as ``srun`` does on
  SLURM; :func:`export_submitit_ranks` tells Lightning which rank each one is, so the
  SLURM launcher config can be tried on one machine.
- The SLURM launcher's nodes, tasks and GPUs follow ``trainer.num_nodes``/``devices``
  through the resolvers :func:`devices_per_node` and :func:`gpus_per_node`
  (conf/hydra/launcher/slurm.yaml; registered by ``seqmnist.shell``).
- A SLURM batch job stopped by its time-limit signal puts itself back in the queue
  (:func:`requeue_job`); started again, it continues from ``last.ckpt``
  (:func:`requeued_checkpoint`).
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import logging
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from omegaconf import DictConfig, open_dict

from seqmnist.core.errors import ConfigError
from seqmnist.core.internals import (
    rank_zero_rank,
    set_rank_zero_rank,
    stop_child_process_observers,
)
from seqmnist.core.machine import usable_cpus
from seqmnist.core.rundir import RunDir
from seqmnist.training.lifecycle import TIME_LIMIT_SIGNALS

log = logging.getLogger("seqmnist.cluster")

# Set for the ranks Lightning starts: the resolved config of the job they belong to.
RANK_CONFIG_ENV = "SEQMNIST_RANK_CONFIG"
# What Lightning's process launcher writes into the launching process's environment.
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


# -- the SLURM launcher follows the trainer ---------------------------------------------
def devices_per_node(devices: Any) -> int:
    """``trainer.devices`` as SLURM tasks per node: Lightning wants one task per device."""
    if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        return devices
    if isinstance(devices, str) and devices.isdigit() and int(devices) >= 1:
        return int(devices)
    if isinstance(devices, (list, tuple)) and devices:
        return len(devices)
    raise ConfigError(
        f"trainer.devices={devices!r} cannot size a SLURM job: it needs one task per device. "
        "Fix: give a number, e.g. trainer.devices=4 (GPUs or CPU processes per node)."
    )


def gpus_per_node(accelerator: str, devices: Any) -> int:
    """GPUs to ask SLURM for: one per device with ``accelerator=gpu``/``cuda``, none for cpu."""
    if str(accelerator) in ("gpu", "cuda"):
        return devices_per_node(devices)
    if str(accelerator) == "cpu":
        return 0
    raise ConfigError(
        f"trainer.accelerator={accelerator} cannot say how many GPUs to ask SLURM for. Fix: "
        "trainer.accelerator=gpu (one GPU per device) or trainer.accelerator=cpu."
    )


# -- ranks started by Lightning ---------------------------------------------------------
def rank_config() -> Path | None:
    """The config to run when Lightning started this process as DDP rank > 0 of a job."""
    path = os.environ.get(RANK_CONFIG_ENV)
    if path and os.environ.get("LOCAL_RANK", "0") != "0":
        return Path(path)
    return None


@contextlib.contextmanager
def one_job(resolved_config: Path, trainer: L.Trainer) -> Iterator[None]:
    """Around one job's fit and test in the process that runs it."""
    launching = "LOCAL_RANK" not in os.environ  # not itself a rank someone else started
    before = {k: os.environ.get(k) for k in (*_LAUNCH_ENV, RANK_CONFIG_ENV, "OMP_NUM_THREADS")}
    threads = torch.get_num_threads()
    if launching:
        os.environ[RANK_CONFIG_ENV] = str(resolved_config)
        # The ranks Lightning starts inherit this process's share of the cores (cpu_threads);
        # with OMP_NUM_THREADS set, Lightning's launcher leaves the count alone.
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if launching:
            end_child_ranks(trainer)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if launching:
            # Lightning's launcher also divided this process's threads among the ranks.
            torch.set_num_threads(threads)
            for key, value in before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def end_child_ranks(trainer: L.Trainer, timeout: float = 60) -> None:
    """Wait for the ranks Lightning started for this job (they end with it), and end any
    left waiting on a rank that failed, before the next job of a sweep starts its own.
    Lightning's watcher of those ranks is stopped first: it would kill this process when
    it sees one ended by a signal."""
    procs = list(getattr(trainer.strategy.launcher, "procs", None) or [])
    if not procs:
        return
    stop_child_process_observers()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("rank process %d did not end with its job; killing it", proc.pid)
            proc.kill()
            proc.wait()


# -- ranks started by submitit or by an external launcher -------------------------------
def export_submitit_ranks() -> bool:
    """In a job of submitit's *local* executor with several tasks, export each task's rank
    for Lightning (on SLURM, Lightning reads SLURM's own variables). True if exported."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local":
        return False
    if int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) <= 1 or "LOCAL_RANK" in os.environ:
        return False
    import submitit

    env = submitit.helpers.TorchDistributedEnvironment()
    # The address submitit gives is the host name; the local tasks all run here.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(env.master_port),
        WORLD_SIZE=str(env.world_size),
        LOCAL_RANK=str(env.local_rank),
        NODE_RANK="0",
    )
    set_rank_zero_rank(env.rank)  # Lightning read the rank at import, before this
    return True


def first_process(trainer: L.Trainer) -> bool:
    """Whether this process writes the run's files. Before ``fit`` starts the ranks, the
    Trainer of every rank still says global rank 0; Lightning's rank-zero flag, read from
    the launcher's variables at import, already knows."""
    return trainer.is_global_zero and rank_zero_rank() == 0


def launched_as_one_of_many() -> str | None:
    """Which external launcher started several copies of this command, if one did."""
    if "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "torchrun"
    # submitit's jobs (SUBMITIT_EXECUTOR set) have their sweep's directory already.
    srun = "SLURM_STEP_ID" in os.environ and "SUBMITIT_EXECUTOR" not in os.environ
    if srun and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "srun"
    return None


def check_shared_run_dir(run_dir_given: bool) -> None:
    """Copies of one run started by torchrun or srun must write into one directory; the
    default name has the start time in it, which differs between processes."""
    launcher = launched_as_one_of_many()
    if launcher and not run_dir_given:
        name = "$SLURM_JOB_ID" if launcher == "srun" else "<a name of yours>"
        raise ConfigError(
            f"this run was started as several processes by {launcher}, and each would name "
            "its own run directory after its own start time. Fix: give them one, e.g. "
            f"hydra.run.dir=outputs/train/runs/{name}."
        )


# -- parallel jobs of a sweep on one machine --------------------------------------------
def parallel_jobs() -> tuple[int, int]:
    """(jobs run at once by the Hydra launcher, this job's number); (1, 0) outside one."""
    from hydra.core.hydra_config import HydraConfig

    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # not running under Hydra (tests, notebooks)
        return 1, 0
    n_jobs = hydra_cfg.launcher.get("n_jobs") or 1
    num = hydra_cfg.job.get("num") or 0
    return int(n_jobs), int(num)


def cpu_ranks_here(cfg: DictConfig) -> int:
    """Processes of this job that share this machine's CPUs: the tasks submitit's local
    executor started (``hydra/launcher=local_ranks``), or the CPU DDP ranks Lightning will
    start (``trainer=ddp trainer.accelerator=cpu trainer.devices=N`` on one node). SLURM's
    tasks each get CPUs of their own (``SLURM_CPUS_PER_TASK``): 1 there."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        return max(1, int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")))
    if os.environ.get("SLURM_CPUS_PER_TASK") or "TORCHELASTIC_RUN_ID" in os.environ:
        return 1
    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if "ddp" not in str(trainer.get("strategy", "auto")) or not on_cpu:
        return 1
    if int(trainer.get("num_nodes", 1) or 1) != 1:
        return 1
    devices = trainer.get("devices", 1)
    return int(devices) if str(devices).isdigit() else 1


def cpu_threads(cfg: DictConfig) -> int | None:
    """Threads for this run: ``threads`` if set, else the CPUs this process may use (SLURM's
    allocation, the affinity mask) divided by the launcher's parallel jobs and by the job's
    CPU ranks on this machine (:func:`cpu_ranks_here`), so that they never oversubscribe
    the cores. A SLURM task gets its own ``cpus_per_task`` CPUs, which Lightning's DDP
    would divide by the devices again: there ``OMP_NUM_THREADS`` is set, which Lightning
    leaves alone."""
    if cfg.get("threads"):
        return int(cfg.threads)
    n_jobs, _ = parallel_jobs()
    ranks = cpu_ranks_here(cfg)
    if n_jobs == 1 and ranks == 1:
        if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
            os.environ.setdefault("OMP_NUM_THREADS", str(usable_cpus()))
            return usable_cpus()
        return None
    cores = usable_cpus()
    jobs = cores if n_jobs < 0 else min(n_jobs, cores)
    threads = max(1, cores // (jobs * ranks))
    if ranks > 1:
        log.info(
            "%d CPU ranks share this machine's %d cores: %d torch thread%s each",
            ranks,
            cores,
            threads,
            "" if threads == 1 else "s",
        )
    return threads


class GpuClaim(contextlib.AbstractContextManager["GpuClaim"]):
    """The GPU a parallel job took, kept from the sweep's other jobs on this machine by a lock
    on its file until :meth:`release` (or the end of a ``with`` block: the job's run). A
    process that dies loses its locks with it. Without a lock (no GPU chosen, or every GPU
    taken) it holds nothing."""

    def __init__(self, index: int | None = None, lock: IO[bytes] | None = None) -> None:
        self.index = index
        self._lock = lock

    def release(self) -> None:
        if self._lock is None:
            return
        # Unlocked explicitly: a DataLoader worker forked by the job holds the same open
        # file, and closing only this process's copy would leave the GPU locked until it ends.
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
        self._lock = None

    def __exit__(self, *exc: object) -> None:
        self.release()


def gpu_lock_dir() -> Path:
    """Where the jobs of this sweep on this machine lock their GPUs: a per-user folder in the
    local temp dir, one per sweep dir. Not the sweep dir itself: that may be on a network file
    system, where ``flock`` is unreliable."""
    from hydra.core.hydra_config import HydraConfig

    try:
        sweep = str(Path(HydraConfig.get().sweep.dir).expanduser().resolve())
    except ValueError:  # not running under Hydra
        sweep = str(Path.cwd())
    key = hashlib.sha256(sweep.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"seqmnist-gpu-locks-{os.getuid()}" / key
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def take_free_gpu(lock_dir: Path, count: int, first: int) -> GpuClaim | None:
    """The first of ``count`` GPUs, from ``first`` on, whose lock nobody holds; None when all
    are held."""
    for index in [*range(first, count), *range(first)]:
        lock = (lock_dir / f"gpu{index}.lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a running job of this sweep has it
            lock.close()
            continue
        except BaseException:
            lock.close()
            raise
        return GpuClaim(index, lock)
    return None


def spread_over_gpus(cfg: DictConfig) -> GpuClaim:
    """Parallel one-GPU jobs (hydra/launcher=joblib on a GPU box, the Optuna sweeper's slots)
    each on a GPU of its own, instead of all on cuda:0: the first GPU no running job of the
    sweep holds, starting from the job number's turn. By number alone, jobs that start
    whenever a slot frees (0, 2 and 4 running at once on 2 GPUs) would share a GPU while
    another idles. Hold the returned claim for the job's whole run (``with``)."""
    n_jobs, num = parallel_jobs()
    trainer = cfg.trainer
    if n_jobs == 1 or str(trainer.get("accelerator")) not in ("gpu", "cuda", "auto"):
        return GpuClaim()
    if trainer.get("devices") not in (1, "1") or not torch.cuda.is_available():
        return GpuClaim()
    count = torch.cuda.device_count()
    try:
        claim = take_free_gpu(gpu_lock_dir(), count, num % count)
    except OSError as e:  # no writable temp dir, a file system without flock
        log.warning(f"GPU locks unavailable ({e}): job {num} takes GPU {num % count} by number")
        claim = GpuClaim(num % count)
    if claim is None:
        log.warning(
            f"every GPU ({count}) is taken by a running job of this sweep: job {num} shares "
            f"GPU {num % count}"
        )
        claim = GpuClaim(num % count)
    with open_dict(cfg):
        cfg.trainer.devices = [claim.index]
    return claim


# -- SLURM: time limits, requeue, and where the ranks ran -------------------------------
def slurm_batch_job() -> str | None:
    """The id of the SLURM batch job this process is a task of (``sbatch``, which submitit
    uses too); None outside one, and in an interactive ``salloc``/``srun`` session, which
    cannot be requeued. A task of a job array is named ``<array job>_<task>``: the array's
    own id (which the array's first task also has as ``SLURM_JOB_ID``) names every task of
    it, and ``scontrol requeue`` of that would requeue them all, finished ones included."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or os.environ.get("ENVIRONMENT") != "BATCH":
        return None
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else job


class Requeue(enum.Enum):
    """What became of a SLURM batch job stopped by its time-limit signal."""

    REQUEUED = "requeued"  # this task asked SLURM, and SLURM took it
    BY_FIRST_TASK = "by first task"  # another task of the job: its first task asks
    FAILED = "failed"  # SLURM refused or could not be asked: the run stays interrupted


def requeue_job(signum: int | None, enabled: bool = True) -> Requeue | None:
    """After a clean stop on the time-limit signal (``last.ckpt`` saved on every rank): put
    this batch job back in the queue. The job's first task asks SLURM (``scontrol requeue``
    of its own array task); the other tasks leave that to it. None when no requeue applies
    (not a batch job, another signal, ``requeue=false``)."""
    job = slurm_batch_job()
    if not enabled or job is None or signum not in TIME_LIMIT_SIGNALS:
        return None
    if os.environ.get("SLURM_PROCID", "0") != "0":
        return Requeue.BY_FIRST_TASK
    try:
        subprocess.run(
            ["scontrol", "requeue", job], check=True, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as e:
        detail = " ".join(str(getattr(e, "stderr", None) or e).split())
        log.error(f"could not requeue SLURM job {job}: {detail}")
        return Requeue.FAILED
    log.warning(f"SLURM job {job} requeued: started again, it continues from last.ckpt")
    return Requeue.REQUEUED


def requeued_checkpoint(run: RunDir) -> Path | None:
    """The ``last.ckpt`` a SLURM job started again after a requeue continues from (the job
    runs the same command in the same run dir); None for a first start, or when the job
    stopped before its first checkpoint (it then starts over)."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    if slurm_batch_job() is None or not restarts.isdigit() or int(restarts) < 1:
        return None
    return run.last_ckpt if run.last_ckpt.is_file() else None


def rank_nodes(trainer: L.Trainer) -> list[str]:
    """The node each rank ran on, in rank order: SLURM's node name, else the host name."""
    name = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    dist = torch.distributed
    if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return [name]
    gathered: list[Any] = [None] * trainer.world_size
    dist.all_gather_object(gathered, name)
    return [str(n) for n in gathered]
