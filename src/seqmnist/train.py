"""Train, then test the best checkpoint: ``python -m seqmnist.train [overrides]``.

Compose the config, build data module, model, callbacks, loggers and Trainer with
``hydra.utils.instantiate``, fit, test on the full test set, and write ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from seqmnist.checkpoint import read_checkpoint
from seqmnist.config import validate
from seqmnist.errors import SeqMNISTError
from seqmnist.faults import resume_config, sigint_as_sigterm
from seqmnist.machine import describe as describe_machine
from seqmnist.machine import skip_nvml_probe_without_nvml
from seqmnist.nets import count_parameters

log = logging.getLogger("seqmnist.train")

# Our data module restores the position in the epoch itself (see seqmnist.faults).
warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising our own user errors unwrapped.

    Hydra wraps anything a constructor raises in ``InstantiationException``; a bad value
    caught by one of our constructors should still read as one clear message.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, SeqMNISTError):
            raise e.__cause__ from None
        raise


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a callbacks/logger group (null entries skipped)."""
    if not group:
        return []
    return [build(node) for node in group.values() if node and "_target_" in node]


def run_hparams(cfg: DictConfig, params: int) -> dict[str, Any]:
    """The flat settings that tell runs apart (TensorBoard's HParams tab, reports)."""
    sched = OmegaConf.select(cfg, "scheduler.scheduler._target_")
    return {
        "cell": cfg.model.net.cell,
        "layers": cfg.layers,
        "hidden": cfg.hidden,
        "dropout": cfg.dropout,
        "bidirectional": cfg.bidirectional,
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1],
        "lr": cfg.optimizer.lr,
        "scheduler": sched.rsplit(".", 1)[-1] if sched else "none",
        "batch_size": cfg.data.batch_size,
        "dataset": cfg.data.dataset,
        "sequence": cfg.data.sequence,
        "seed": cfg.seed,
        "max_epochs": cfg.trainer.max_epochs,
        "gradient_clip_val": cfg.trainer.gradient_clip_val or 0.0,
        "params": params,
    }


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def cpu_threads(cfg: DictConfig) -> int | None:
    """Threads for this run: ``threads`` if set, else cores / parallel jobs of the launcher."""
    if cfg.get("threads"):
        return int(cfg.threads)
    try:
        n_jobs = HydraConfig.get().launcher.get("n_jobs")
    except ValueError:  # not running under Hydra (tests, notebooks)
        return None
    if not n_jobs or n_jobs == 1:
        return None
    cores = os.cpu_count() or 1
    return max(1, cores // (cores if n_jobs < 0 else min(n_jobs, cores)))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one configuration; returns the metrics written to ``metrics.json``."""
    validate(cfg)
    skip_nvml_probe_without_nvml()
    if threads := cpu_threads(cfg):
        torch.set_num_threads(threads)
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
    callbacks = instantiate_group(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):
        # Lightning refuses a progress-bar callback when the bar is switched off.
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    params = count_parameters(model)
    hparams = run_hparams(cfg, params)
    for lg in trainer.loggers:
        lg.log_hyperparams(hparams)

    out = output_dir(cfg)
    metrics: dict[str, Any] = {"status": "running", **hparams, "machine": describe_machine()}
    if cfg.get("resume"):
        metrics["resumed_from"] = cfg.ckpt_path
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        # .hydra/config.yaml keeps interpolations; this is what the run actually used.
        OmegaConf.save(cfg, out / "resolved_config.yaml", resolve=True)
        # Replaced at the end; a report of a sweep in progress shows this job as running.
        (out / "metrics.json").write_text(json.dumps(metrics) + "\n")

    started = time.perf_counter()
    if cfg.get("train", True):
        # Our checkpoints hold only tensors and plain values: no unpickling of objects.
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    metrics["epochs"] = trainer.current_epoch
    best = trainer.callback_metrics.get("val/acc_best")
    metrics["val/acc_best"] = float(best) if best is not None else None

    ckpt_cb = trainer.checkpoint_callback
    best_path = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb else ""
    metrics["best_ckpt"] = best_path or None
    if cfg.get("test", True):
        # Our checkpoints hold only tensors and plain values: no unpickling of objects.
        results = trainer.test(
            model,
            datamodule=datamodule,
            ckpt_path=best_path or None,
            verbose=False,
            weights_only=True,
        )
        metrics.update({k: float(v) for k, v in results[0].items() if k.startswith("test/")})
    metrics["status"] = "completed"

    if trainer.is_global_zero:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log.info(summary_line(metrics))
    return metrics


def summary_line(m: dict[str, Any]) -> str:
    def pct(key: str) -> str:
        return f"{100 * m[key]:.2f}%" if m.get(key) is not None else "n/a"

    return (
        f"{m['cell']} {m['layers']}x{m['hidden']} {m['optimizer']} lr={m['lr']:g} "
        f"| params {m['params']:,} | val_acc_best {pct('val/acc_best')} "
        f"| test_acc {pct('test/acc')} "
        f"| epochs {m['epochs']} | {m['train_seconds']:.1f} s"
    )


def record_failure(cfg: DictConfig, error: BaseException | str, status: str = "failed") -> None:
    """Mark the run failed in its own ``metrics.json`` so sweeps and reports can see why."""
    try:
        out = output_dir(cfg)
        out.mkdir(parents=True, exist_ok=True)
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        record = {"status": status, "error": reason}
        (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    except Exception:  # never hide the original error behind a bookkeeping one
        log.exception("could not write metrics.json for the failed run")


def interrupted(cfg: DictConfig, stop: sigint_as_sigterm) -> int:
    """A signal stopped the run: say where its checkpoint is and how to continue."""
    name = "Ctrl+C" if stop.exit_code == 130 else "SIGTERM"
    out = output_dir(cfg)
    last = out / "checkpoints" / "last.ckpt"
    if last.is_file():
        hint = f"checkpoint {last}; continue with: python -m seqmnist.train resume={out}"
    else:
        hint = "it stopped before its first checkpoint, so there is nothing to resume"
    message = f"stopped by {name}; {hint}"
    if (out / "metrics.json").exists():
        record_failure(cfg, message, status="interrupted")
    log.error(message)
    return stop.exit_code


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``val/acc_best`` for sweepers to optimise.

    In a single run a user error (bad value, missing data) prints one message and exits
    with status 2. In a multirun a failing job is recorded as failed in its own directory
    and returns NaN, so the other jobs of the sweep still run. SIGTERM or Ctrl+C stops
    after the current batch with a checkpoint and exits 143 / 130 (a sweep stops too).
    """
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    with sigint_as_sigterm() as stop:
        try:
            if cfg.get("resume"):
                resumed = resume_config(cfg, list(HydraConfig.get().overrides.task))
                read_checkpoint(Path(resumed.ckpt_path))  # a corrupt file: one clear message
                cfg = resumed  # from here on, failures are recorded in the resumed run's dir
            metrics = train(cfg)
        except SIGTERMException:
            sys.exit(interrupted(cfg, stop))
        except Exception as e:
            # A job that got as far as starting (metrics.json exists) is marked failed; a
            # config rejected up front leaves nothing behind in a single run.
            if multirun or (output_dir(cfg) / "metrics.json").exists():
                record_failure(cfg, e)
            if isinstance(e, SeqMNISTError):
                log.error(str(e))
                if not multirun:
                    sys.exit(e.EXIT_CODE)
            elif not multirun:
                raise
            else:
                log.exception("job failed; the sweep goes on")
            return float("nan")
    return metrics.get("val/acc_best")


if __name__ == "__main__":
    main()
