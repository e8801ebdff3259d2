"""Train, then test the best checkpoint: ``python -m seqmnist.train [overrides]``.

Compose the config, build data module, model, callbacks, loggers and Trainer with
``hydra.utils.instantiate``, fit, test on the full test set, and write ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from seqmnist.config import validate
from seqmnist.errors import SeqMNISTError
from seqmnist.nets import count_parameters

log = logging.getLogger("seqmnist.train")

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a callbacks/logger group (null entries skipped)."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node and "_target_" in node]


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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one configuration; returns the metrics written to ``metrics.json``."""
    validate(cfg)
    L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = instantiate(cfg.data)
    model: L.LightningModule = instantiate(
        cfg.model,
        input_size=datamodule.input_size,
        num_classes=datamodule.num_classes,
        class_names=datamodule.class_names,
    )
    callbacks = instantiate_group(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):
        # Lightning refuses a progress-bar callback when the bar is switched off.
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    params = count_parameters(model)
    hparams = run_hparams(cfg, params)
    for lg in trainer.loggers:
        lg.log_hyperparams(hparams)

    out = output_dir(cfg)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        # .hydra/config.yaml keeps interpolations; this is what the run actually used.
        OmegaConf.save(cfg, out / "resolved_config.yaml", resolve=True)

    metrics: dict[str, Any] = {"status": "running", **hparams}
    started = time.perf_counter()
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    metrics["epochs"] = trainer.current_epoch
    best = trainer.callback_metrics.get("val/acc_best")
    metrics["val/acc_best"] = float(best) if best is not None else None

    ckpt_cb = trainer.checkpoint_callback
    best_path = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb else ""
    metrics["best_ckpt"] = best_path or None
    if cfg.get("test", True):
        results = trainer.test(
            model, datamodule=datamodule, ckpt_path=best_path or None, verbose=False
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


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``val/acc_best`` for sweepers to optimise."""
    try:
        metrics = train(cfg)
    except SeqMNISTError as e:
        log.error(str(e))
        if HydraConfig.get().mode.name == "RUN":
            sys.exit(e.EXIT_CODE)
        raise
    return metrics.get("val/acc_best")


if __name__ == "__main__":
    main()
