"""Checks of the composed config, run before any data is read or a model is built.

Hydra already rejects unknown group choices (``cell=transformer``, ``optimizer=nope``) with
the list of available options; this covers the values inside the groups. Each value's rule
lives with the code that uses it (the data module's arguments, the network's) and is
applied here to the key the user types (``layers=0``, not ``model.net.num_layers=0``).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from seqmnist.core.checks import OPTIONAL_BOOLEAN, Rule, int_at_least, number
from seqmnist.core.errors import ConfigError
from seqmnist.data import datamodule
from seqmnist.data.augment import BatchAugment
from seqmnist.data.sequences import check_step_pixels
from seqmnist.models import nets
from seqmnist.models.module import LABEL_SMOOTHING

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


def rules() -> dict[str, Rule]:
    """Config key (as typed on the command line) -> its rule."""
    table: dict[str, Rule] = {"model.net.cell": nets.RULES["cell"]}
    table.update({short: nets.RULES[arg] for short, arg in SHORT_KEYS.items()})
    table["optimizer.lr"] = number(lambda v: v > 0, "a number > 0")
    table.update({f"data.{name}": rule for name, rule in datamodule.RULES.items()})
    table["trainer.max_epochs"] = int_at_least(1)
    table["seed"] = int_at_least(0)
    table["compile"] = OPTIONAL_BOOLEAN
    return table


def _read(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as e:  # an interpolation that cannot resolve, a ??? value
        raise ConfigError(f"{key} could not be read: {e}") from None


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first key whose value is not allowed."""
    for key, rule in rules().items():
        rule.check(key, _read(cfg, key))
    check_step_pixels(cfg.data.sequence, cfg.data.get("step_pixels"))
    nets.RULES["init"].check("model.net.init", cfg.model.net.init)
    LABEL_SMOOTHING.check("model.label_smoothing", cfg.model.label_smoothing)
    augment = _read(cfg, "data.augment")
    BatchAugment.from_config(OmegaConf.to_container(augment) if augment is not None else None)
    # Only cell=gru has a kernel to choose (conf/cell/gru.yaml).
    nets.check_cpu_kernel(cfg.model.net.cell, cfg.model.net.get("cpu_kernel", "native"))
    check_accelerator(_read(cfg, "trainer.accelerator"))


def check_accelerator(accelerator: Any) -> None:
    """A GPU asked for on a machine without one is a config error, not a Lightning traceback."""
    if str(accelerator) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible on this machine. "
            "Fix: use trainer=cpu (or run on a machine with a GPU)."
        )


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
