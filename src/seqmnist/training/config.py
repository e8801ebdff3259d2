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
from seqmnist.models.anytime import check_anytime_loss
from seqmnist.models.module import LABEL_SMOOTHING
from seqmnist.training.settings import SHORT_KEYS


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
    check_anytime_loss(_read(cfg, "model.anytime_loss"), _read(cfg, "bidirectional"))
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
