"""Readers of this project's earlier formats, gathered here: run directories, configs and
checkpoints written by older versions keep working. Each entry says what changed and when a
reader meets it; the rest of the code reads only today's format.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

# Classes that moved when the package was split into data/, models/, training/, runs/: a run
# saved before the move names the old paths in its resolved_config.yaml (resume=).
MOVED_TARGETS = {
    "seqmnist.data.SeqMNISTDataModule": "seqmnist.data.datamodule.SeqMNISTDataModule",
    "seqmnist.module.SeqClassifier": "seqmnist.models.module.SeqClassifier",
    "seqmnist.faults.AtomicCheckpointIO": "seqmnist.training.faults.AtomicCheckpointIO",
    "seqmnist.faults.FaultTolerance": "seqmnist.training.faults.FaultTolerance",
}

# Config keys added after some runs were saved, with the value those runs ran with: a saved
# config without them (resume=) gets it.
ADDED_KEYS: dict[str, Any] = {
    "model.net.init": "torch",
    "model.label_smoothing": 0.0,
    "model.anytime_loss": "none",
    "optimized_metric": "val/acc_best",
    "optuna_trial.monitor": "val/acc",
    "optuna_trial.heartbeat_interval": 30,
    "requeue": True,
}

# metrics.json written before runs recorded a status had results only: they completed.
STATUS_BEFORE_STATUSES = "completed"


def _update_moved_targets(node: Any) -> None:
    if isinstance(node, DictConfig):
        target = node.get("_target_") if "_target_" in node else None
        if target in MOVED_TARGETS:
            node._target_ = MOVED_TARGETS[target]
        for key in node:
            _update_moved_targets(node[key])  # the saved config is resolved: no interpolations
    elif OmegaConf.is_list(node):
        for item in node:
            _update_moved_targets(item)


def upgrade_config(cfg: DictConfig) -> DictConfig:
    """A saved run config in today's format (in place, and returned): moved ``_target_``
    paths rewritten, keys added since filled with the value the run had."""
    _update_moved_targets(cfg)
    for key, value in ADDED_KEYS.items():
        if OmegaConf.select(cfg, key, default=None) is None:
            OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def run_status(metrics: dict[str, Any]) -> str:
    """A ``metrics.json``'s status (files from before statuses: completed)."""
    return str(metrics.get("status") or STATUS_BEFORE_STATUSES)


def cuda_rng_state(saved: Any, index: int) -> Any:
    """The CUDA generator state of device ``index`` from a checkpoint's RNG entry: one state
    (today), or one per visible GPU (checkpoints before per-rank states); None when a list
    has no entry for the device."""
    if isinstance(saved, (list, tuple)):
        return saved[index] if index < len(saved) else None
    return saved


def optimized_metric(metrics: dict[str, Any]) -> str:
    """The name of the number a run is judged by, as its ``metrics.json`` records it (files
    from before ``optimized_metric`` was a setting: ``val/acc_best``)."""
    return str(metrics.get("optimized_metric") or ADDED_KEYS["optimized_metric"])


def datamodule_state(state: dict[str, Any], batch_size: int, world_size: int) -> dict[str, Any]:
    """The data module's checkpoint state with today's ``train_batches`` (epoch, batches done).
    Checkpoints before the rank-aware sampler kept ``train_position`` (epoch, samples done in
    one process's order); under DDP that position was not kept, so the epoch restarts."""
    if state.get("train_batches") is not None or state.get("train_position") is None:
        return state
    epoch, samples = state["train_position"]
    done = samples // batch_size if world_size == 1 else 0
    return {**state, "train_batches": (epoch, done), "world_size": world_size}
