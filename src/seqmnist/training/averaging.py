"""An exponential moving average of the weights, evaluated and checkpointed as the model.

Lightning's ``WeightAveraging`` callback keeps a ``torch.optim.swa_utils.AveragedModel``,
validates on it, and writes it as every checkpoint's ``state_dict`` (what ``evaluate`` and
``predict`` load), with the trained weights beside it under ``current_model_state`` for
resuming. Two things are added here:

- a warm-up of the decay, ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (as timm's
  ``ModelEmaV2`` and TensorFlow's ``ExponentialMovingAverage(num_updates=...)``), so that in
  a short run the average is not dominated by the first, untrained steps;
- the ``last.ckpt`` that ``ModelCheckpoint`` writes when training ends (after this callback
  has put the average into the model) still keeps the trained weights for ``resume=``;
- loading a checkpoint outside ``fit`` (``trainer.test(ckpt_path="best")``) keeps the
  averaged weights it holds. Lightning's callback would load the trained weights over them
  whenever it has an average in memory, i.e. in the test right after training.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from seqmnist.core.errors import ConfigError


def ema_with_warmup(decay: float):
    """``multi_avg_fn`` for ``AveragedModel``: ``avg += (1 - d_n) * (current - avg)`` with
    ``d_n = min(decay, (1 + n) / (10 + n))`` (``n``: updates so far, a device tensor, so no
    host sync per step)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        n = n.to(averaged[0].dtype)
        weight = 1 - torch.clamp((1 + n) / (10 + n), max=decay)
        for avg, cur in zip(averaged, current, strict=True):
            avg.lerp_(cur, weight.to(avg.device))

    return update


class EMAWeights(WeightAveraging):
    """EMA of the weights after every optimizer step, with a warm-up (see the module doc).

    Args:
        decay: the decay after warm-up; 0.999 averages over about the last 1,000 steps.
    """

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(
                f"callbacks.weight_averaging.decay={decay!r} is not allowed; it must be a "
                "number in (0, 1) (0.999: about the last 1,000 steps)."
            )
        super().__init__(multi_avg_fn=ema_with_warmup(decay))
        self.decay = decay
        # The trained weights, kept when training ends and the model takes the average.
        self._trained: dict[str, Any] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trained = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trained = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._trained is not None and "current_model_state" in checkpoint:
            # Saved after training ended: the model holds the average by now.
            checkpoint["current_model_state"] = self._trained

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # state_dict holds the averaged weights: they are what is measured
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
