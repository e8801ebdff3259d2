"""Train, then test the best checkpoint: ``python -m seqmnist.train [overrides]``.

Compose the config, check it, build data module, model, callbacks, loggers and Trainer
with ``hydra.utils.instantiate``, fit, test on the full test set, and write the run
directory's ``metrics.json``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from seqmnist.core.errors import SeqMNISTError
from seqmnist.core.machine import describe as describe_machine
from seqmnist.core.machine import skip_nvml_probe_without_nvml
from seqmnist.core.rundir import RunDir
from seqmnist.inference.checkpoints import read_checkpoint
from seqmnist.jobs.cluster import (
    Requeue,
    check_shared_run_dir,
    cpu_threads,
    export_submitit_ranks,
    first_process,
    one_job,
    rank_config,
    rank_nodes,
    requeue_job,
    requeued_checkpoint,
    slurm_batch_job,
    spread_over_gpus,
)
from seqmnist.jobs.resume import resume_config
from seqmnist.jobs.search import OptunaPruning, mark_requeued, pruning_callback
from seqmnist.jobs.tracking import close, log_settings, prepare, publish, run_ids
from seqmnist.models import count_parameters, describe
from seqmnist.shell import exit_on_error, fail, hydra_command
from seqmnist.training.build import build, build_callbacks, build_group, build_trainer
from seqmnist.training.config import validate
from seqmnist.training.faults import last_logged
from seqmnist.training.lifecycle import Lifecycle, Phase
from seqmnist.training.settings import net_of, run_settings

log = logging.getLogger("seqmnist.train")

# Our data module restores the position in the epoch itself (see seqmnist.data.datamodule).
warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")
# Every run has a directory of its own, so its checkpoint folder holds files only when the
# run is being resumed: that is the point, not a problem worth a warning.
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def run_dir(cfg: DictConfig) -> RunDir:
    return RunDir(Path(cfg.paths.output_dir))


@dataclass
class Job:
    """What one run is made of once set up."""

    out: RunDir
    datamodule: L.LightningDataModule
    model: L.LightningModule
    trainer: L.Trainer
    pruning: OptunaPruning | None  # this job is a trial of an Optuna search
    metrics: dict[str, Any]


def train(cfg: DictConfig, life: Lifecycle | None = None) -> dict[str, Any]:
    """Fit and test one configuration; returns the metrics written to ``metrics.json``."""
    # A parallel one-GPU job keeps its GPU from the sweep's other jobs until it ends, failed
    # or not; the next job (of this worker process or another) may then take it.
    with spread_over_gpus(cfg):
        return phases(cfg, life or Lifecycle.active or Lifecycle())


def phases(cfg: DictConfig, life: Lifecycle) -> dict[str, Any]:
    """The run's phases in order: set up, fit, test, report. ``life`` holds the phase,
    decides what a signal does in each and writes the status
    (:mod:`seqmnist.training.lifecycle`)."""
    job = set_up(cfg)
    life.begin(job.out, job.metrics, writes=first_process(job.trainer))
    try:
        with one_job(job.out.resolved_config, job.trainer):
            life.enter(Phase.FIT)
            fit(cfg, job)
            life.stop_after_fit(job.trainer)
            metrics = test(cfg, job)
    except BaseException as e:
        if job.pruning is not None:
            job.pruning.stop_beating()
        stopped = isinstance(e, SIGTERMException | KeyboardInterrupt)
        close(job.trainer.loggers, "killed" if stopped else "failed")
        raise
    life.enter(Phase.REPORT)
    report(job, metrics, life)
    life.enter(Phase.DONE)
    return metrics


def set_up(cfg: DictConfig) -> Job:
    """Check the config, then build data module, model, loggers, callbacks and Trainer."""
    validate(cfg)
    skip_nvml_probe_without_nvml()
    if threads := cpu_threads(cfg):
        torch.set_num_threads(threads)
    export_submitit_ranks()
    L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = build(cfg.data)
    model: L.LightningModule = build(
        cfg.model,
        input_size=datamodule.input_size,
        num_classes=datamodule.num_classes,
        class_names=datamodule.class_names,
    )
    if cfg.get("compile"):
        model.net.compile()
    prepare(cfg.get("logger"))  # the trackers' packages, MLflow's database and experiment
    loggers = build_group(cfg.get("logger"))
    callbacks = build_callbacks(cfg)
    pruning = pruning_callback(cfg)
    if pruning is not None:
        callbacks.append(pruning)
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers or False)

    hparams = {**run_settings(cfg), "params": count_parameters(model)}
    log_settings(trainer.loggers, hparams)

    out = run_dir(cfg)
    metrics: dict[str, Any] = {"status": "running", **hparams, "machine": describe_machine()}
    if cfg.get("resume"):
        metrics["resumed_from"] = cfg.ckpt_path
    if first_process(trainer):
        if ids := run_ids(trainer.loggers):  # MLflow / W&B runs that resume= continues
            metrics["tracking"] = ids
        out.save_config(cfg)
    return Job(out, datamodule, model, trainer, pruning, metrics)


def fit(cfg: DictConfig, job: Job) -> None:
    """``Trainer.fit`` (resumed from ``ckpt_path`` when given)."""
    started = time.perf_counter()
    if cfg.get("train", True):
        # Our checkpoints hold only tensors and plain values: no unpickling of objects.
        job.trainer.fit(
            job.model,
            datamodule=job.datamodule,
            ckpt_path=cfg.get("ckpt_path"),
            weights_only=True,
        )
    job.metrics["train_seconds"] = round(time.perf_counter() - started, 2)


def test(cfg: DictConfig, job: Job) -> dict[str, Any]:
    """The fit's figures, then ``Trainer.test`` of the best checkpoint; the run's metrics."""
    trainer, metrics = job.trainer, job.metrics
    metrics["epochs"] = trainer.current_epoch
    metrics["world_size"] = trainer.world_size
    metrics["nodes"] = rank_nodes(trainer)  # a collective: every rank gets here
    metric = str(cfg.optimized_metric)
    metrics["optimized_metric"] = metric
    metrics[metric] = last_logged(trainer, metric)

    ckpt_cb = trainer.checkpoint_callback
    best_path = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb else ""
    metrics["best_ckpt"] = best_path or None
    pruning = job.pruning
    if pruning is not None and pruning.pruned_at_epoch is not None:
        # Neither a failure nor a completion: the search stopped it. No test: its score
        # would be of a model the search has given up on.
        metrics.update(status="pruned", pruned_at_epoch=pruning.pruned_at_epoch)
        return metrics
    if cfg.get("test", True):
        # Without training (train=false), the checkpoint given is the one to test.
        tested = best_path or (None if cfg.get("train", True) else cfg.get("ckpt_path"))
        results = trainer.test(
            job.model,
            datamodule=job.datamodule,
            ckpt_path=tested,
            verbose=False,
            weights_only=True,
        )
        metrics.update({k: float(v) for k, v in results[0].items() if k.startswith("test/")})
    metrics["status"] = "completed"
    return metrics


def report(job: Job, metrics: dict[str, Any], life: Lifecycle) -> None:
    """``metrics.json``, the search trial's result, the trackers' files, the summary line."""
    trainer = job.trainer
    if not trainer.is_global_zero:
        return
    life.finish(metrics)
    if job.pruning is not None:  # a search's trial: the job tells its own result
        job.pruning.finish(metrics, metrics["optimized_metric"])
    publish(trainer.loggers, metrics.get("best_ckpt"), job.out.metrics_file)
    if metrics["status"] == "pruned":
        epoch = metrics["pruned_at_epoch"]
        log.info(f"trial pruned after epoch {epoch}; {summary_line(metrics)}")
    else:
        log.info(summary_line(metrics))


def summary_line(m: dict[str, Any]) -> str:
    def pct(key: str) -> str:
        return f"{100 * m[key]:.2f}%" if m.get(key) is not None else "n/a"

    metric = m["optimized_metric"]
    return (
        f"{describe(net_of(m))} {m['optimizer']} lr={m['lr']:g} "
        f"| params {m['params']:,} | {metric.replace('/', '_')} {pct(metric)} "
        f"| test_acc {pct('test/acc')} "
        f"| epochs {m['epochs']} | {m['train_seconds']:.1f} s"
    )


def continuing(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, list[str]]:
    """A SLURM job started again after a requeue continues its run from ``last.ckpt``, as
    ``resume=RUN_DIR`` would (its command line is the one that made the run)."""
    if cfg.get("resume") or not cfg.get("requeue", True):
        return cfg, overrides
    ckpt = requeued_checkpoint(run_dir(cfg))
    if ckpt is None:
        return cfg, overrides
    log.info(f"SLURM job started again after a requeue: continuing from {ckpt}")
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.resume = str(run_dir(cfg).path)
    return cfg, []


def run(cfg: DictConfig, overrides: list[str], multirun: bool) -> tuple[int, float | None]:
    """One job, as the command runs it: ``(exit status, the optimized metric)``.

    In a single run a user error (bad value, missing data) logs one message and gives
    status 2. In a multirun a failing job is recorded as failed in its own directory and
    gives NaN, so the other jobs of the sweep still run. SIGTERM or Ctrl+C stops after the
    current batch with a checkpoint and gives 143 / 130 (the SLURM time-limit signals
    SIGUSR1/SIGUSR2 likewise, 138 / 140). A SLURM batch job stopped by its time limit
    requeues itself (``requeue``) and exits, to continue when SLURM starts it again.
    """
    with Lifecycle() as life:
        try:
            cfg, overrides = continuing(cfg, overrides)
            if cfg.get("resume"):
                resumed = resume_config(cfg, overrides)
                read_checkpoint(Path(resumed.ckpt_path))  # a corrupt file: one clear message
                cfg = resumed  # from here on, failures are recorded in the resumed run's dir
            metrics = train(cfg, life)
        except SIGTERMException:
            requeue = requeue_job(life.signal, enabled=bool(cfg.get("requeue", True)))
            status = life.interrupted(run_dir(cfg), requeue_refused=requeue is Requeue.FAILED)
            if requeue in (Requeue.REQUEUED, Requeue.BY_FIRST_TASK):
                if requeue is Requeue.REQUEUED:  # its trial waits for it, not failed as stale
                    mark_requeued(cfg, str(slurm_batch_job()))
                # No result for submitit: the sweep waits on for the job's next start. A
                # task other than the first exits 0, so that srun (KillOnBadExit) does not
                # end the first task before it has asked SLURM to requeue the job.
                raise SystemExit(0 if requeue is Requeue.BY_FIRST_TASK else status) from None
            return status, None
        except Exception as e:
            # A job that got as far as starting (metrics.json exists) is marked failed; a
            # config rejected up front leaves nothing behind in a single run.
            Lifecycle.failed(run_dir(cfg), e, record=multirun)
            if isinstance(e, SeqMNISTError):
                code = fail(e, log)
                return (0 if multirun else code), float("nan")
            if not multirun:
                raise
            log.exception("job failed; the sweep goes on")
            return 0, float("nan")
    return 0, metrics.get(metrics["optimized_metric"])


def run_rank(config_file: Path) -> int:
    """A DDP rank > 0 that Lightning started for a job: run that job's resolved config.

    Rank 0 reports the run's outcome (metrics.json, the console); a rank that stopped with
    it on a signal or a user error exits 0, since Lightning's launcher kills every process
    of the job, rank 0 included, as soon as one rank exits with an error.
    """
    rank = os.environ.get("LOCAL_RANK", "?")
    logging.basicConfig(level=logging.WARNING, format=f"[rank: {rank}] %(message)s")
    cfg = OmegaConf.load(config_file)
    with Lifecycle() as life:
        try:
            train(cfg, life)
        except (SIGTERMException, SeqMNISTError):
            return 0
    return 0


@hydra_command("train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``optimized_metric`` (``val/acc_best``) for sweepers."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    with exit_on_error(log):
        run_dir_given = any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra)
        check_shared_run_dir(multirun or run_dir_given)
    status, value = run(cfg, list(hydra_cfg.overrides.task), multirun)
    # A job of submitit's launchers is a process of its own: it returns (its metrics.json
    # says interrupted), so that submitit records a result and the sweep collects the rest.
    # Elsewhere a signal stops the whole command, sweep included.
    if status and not (multirun and os.environ.get("SUBMITIT_EXECUTOR")):
        sys.exit(status)
    return value


if __name__ == "__main__":
    if (rank_file := rank_config()) is not None:
        sys.exit(run_rank(rank_file))
    main()
