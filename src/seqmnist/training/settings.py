"""A run's settings as users name them: the short keys of ``conf/train.yaml`` (``layers=``,
``hidden=``, ...) and the flat settings that tell runs apart. Plain config reading, no torch:
the reports use it too."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

# The short, user-facing keys of conf/train.yaml -> the network argument each one fills
# (model.net.<argument>: ${<short key>}; tests/training/test_config.py checks the YAML). The
# one mapping: the checks, the run's flat settings and the summary line all read it.
SHORT_KEYS = {
    "layers": "num_layers",
    "hidden": "hidden_size",
    "dropout": "dropout",
    "bidirectional": "bidirectional",
}
# The flat settings that tell runs apart (metrics.json, TensorBoard's HParams tab, reports).
SETTINGS = [
    "cell",
    *SHORT_KEYS,
    "optimizer",
    "lr",
    "scheduler",
    "batch_size",
    "dataset",
    "sequence",
    "seed",
    "max_epochs",
    "gradient_clip_val",
]


def _short_name(target: Any) -> str | None:
    return str(target).rsplit(".", 1)[-1] if target else None


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """The flat settings of a run's config (see :data:`SETTINGS`); unreadable ones are None."""

    def get(key: str) -> Any:
        try:
            return OmegaConf.select(cfg, key, default=None)
        except Exception:  # an interpolation that only resolves inside Hydra
            return None

    settings = {"cell": get("model.net.cell")}
    settings.update({short: get(f"model.net.{arg}") for short, arg in SHORT_KEYS.items()})
    settings.update(
        optimizer=_short_name(get("optimizer._target_")),
        lr=get("optimizer.lr"),
        scheduler=_short_name(get("scheduler.scheduler._target_")) or "none",
        batch_size=get("data.batch_size"),
        dataset=get("data.dataset"),
        sequence=get("data.sequence"),
        seed=get("seed"),
        max_epochs=get("trainer.max_epochs"),
        gradient_clip_val=get("trainer.gradient_clip_val") or 0.0,
    )
    return settings


def net_of(settings: dict[str, Any]) -> dict[str, Any]:
    """The network's arguments back from a run's flat settings (for its one-line name)."""
    net = {"cell": settings.get("cell")}
    net.update({arg: settings.get(short) for short, arg in SHORT_KEYS.items()})
    return net
