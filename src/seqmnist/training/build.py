"""Build the run's objects from the config with ``hydra.utils.instantiate``, so that a bad
value reads as one of our messages rather than Hydra's instantiation traceback."""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig

from seqmnist.core.errors import ConfigError, SeqMNISTError
from seqmnist.core.internals import quiet_console
from seqmnist.training import precision
from seqmnist.training.faults import FaultTolerance


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


def build_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a callbacks/logger group (null entries skipped)."""
    if not group:
        return []
    return [build(node) for node in group.values() if node and "_target_" in node]


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    callbacks = build_group(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):
        # Lightning refuses a progress-bar callback when the bar is switched off.
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    # A signal stops the run at the end of a training batch: after every other callback's
    # batch end (an EMA update, say), so the checkpoint it saves holds that step whole.
    # Lightning itself moves the ModelCheckpoints after everything else.
    return sorted(callbacks, key=lambda c: isinstance(c, FaultTolerance))


def build_trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    """The Trainer of ``cfg.trainer``; a value Lightning refuses is a :class:`ConfigError`.

    Lightning checks its arguments itself (``precision``, ``strategy``, ``devices``, ...) and
    its message names the value and what it allows; it is passed on with the fix. The
    precision is chosen for this machine first (``auto``: :mod:`seqmnist.training.precision`)
    and written into ``cfg``, so the run's saved config holds it.
    """
    quiet_console()
    precision.resolve(cfg)
    if (chosen := precision.plugin(cfg)) is not None:
        plugins = [build(p) for p in cfg.trainer.get("plugins") or []]
        kwargs = {**kwargs, "precision": None, "plugins": [*plugins, chosen]}
    try:
        return build(cfg.trainer, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        text = " ".join(str(cause).split())
        raise ConfigError(
            f"trainer: Lightning refused the trainer settings: {text} Fix: change the "
            "trainer.* value it names (python -m seqmnist.train --cfg job shows them all)."
        ) from None
