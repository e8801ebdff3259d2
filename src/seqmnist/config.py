"""Checks of the user-facing config keys, run before any data is read or a model is built.

Hydra already rejects unknown group choices (``cell=transformer``, ``optimizer=nope``) with
the list of available options; this covers the values inside the groups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seqmnist.data import DATASETS, SEQUENCE_MODES
from seqmnist.errors import ConfigError
from seqmnist.nets import CELLS


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low
    ), f"an integer >= {low}"


def _number(check: Callable[[float], bool], allowed: str) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and check(float(v))

    return ok, allowed


# key (as typed on the command line) -> (predicate, what is allowed)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.net.cell": (lambda v: v in CELLS, f"one of {sorted(CELLS)} (choose with cell=NAME)"),
    "layers": _int_at_least(1),
    "hidden": _int_at_least(1),
    "dropout": _number(lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    "bidirectional": (lambda v: isinstance(v, bool), "true or false"),
    "optimizer.lr": _number(lambda v: v > 0, "a number > 0"),
    "data.dataset": (lambda v: v in DATASETS, f"one of {sorted(DATASETS)} (choose with data=NAME)"),
    "data.sequence": (lambda v: v in SEQUENCE_MODES, f"one of {list(SEQUENCE_MODES)}"),
    "data.batch_size": _int_at_least(1),
    "data.val_size": _int_at_least(1),
    "trainer.max_epochs": _int_at_least(1),
    "seed": _int_at_least(0),
    "compile": (lambda v: v is None or isinstance(v, bool), "true or false"),
    "data.device_resident": (lambda v: v is None or isinstance(v, bool), "true or false"),
}


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first key whose value is not allowed."""
    for key, (ok, allowed) in RULES.items():
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
        except Exception as e:  # an interpolation that cannot resolve, a ??? value
            raise ConfigError(f"{key} could not be read: {e}") from None
        if not ok(value):
            raise ConfigError(f"{key}={value!r} is not allowed; {key} must be {allowed}.")
    step = cfg.data.get("step_pixels")
    if cfg.data.sequence == "patch" and not (
        isinstance(step, int) and step >= 1 and 784 % step == 0
    ):
        raise ConfigError(
            f"data.step_pixels={step!r} is not allowed with data.sequence=patch; it must divide "
            "784 (1, 2, 4, 7, 8, 14, 16, 28, 49, 56, 98, 112, 196, 392, 784)."
        )
