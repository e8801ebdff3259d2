"""LightningModule: loss, metrics, logging and optimisation around the recurrent net."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from seqmnist.errors import NonFiniteLossError
from seqmnist.lightning_internals import is_logging_step
from seqmnist.models.nets import RecurrentClassifier


def _plain(cfg: Any) -> Any:
    """Config nodes -> plain containers, so checkpoints hold only primitives."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg) if isinstance(cfg, Mapping) else cfg


class SeqClassifier(L.LightningModule):
    """Classifies ``(B, T, F)`` sequences; everything is built from plain config dicts.

    Args:
        net: kwargs for :class:`~seqmnist.models.nets.RecurrentClassifier` (``_target_``
            allowed).
        optimizer: a Hydra ``_partial_`` optimizer config; called with the parameters.
        scheduler: optional ``{"scheduler": <_partial_ config>, "interval": "epoch"|"step",
            "monitor": metric}``. ``T_max``/``total_steps`` left unset are filled with the
            run's length in scheduler intervals.
        input_size, num_classes, class_names: taken from the data module.
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        input_size: int = 28,
        num_classes: int = 10,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        net, optimizer, scheduler = _plain(net), _plain(optimizer), _plain(scheduler)
        class_names = list(class_names) if class_names is not None else None
        self.save_hyperparameters(logger=False)
        self.net = instantiate(
            {"_target_": f"{RecurrentClassifier.__module__}.{RecurrentClassifier.__name__}", **net},
            input_size=input_size,
            num_classes=num_classes,
        )
        # The per-step training metrics skip their input checks: the labels were checked
        # when the data was read, and a NaN loss is caught where the loss is read anyway
        # (logging steps, epoch end). MeanMetric's default NaN check would otherwise read
        # the loss back to the host every step: a device sync on a GPU.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.val_acc_best = MaxMetric()
        # Kept in checkpoints so a resumed run still knows its best validation accuracy, and
        # a run resumed mid-epoch reports the same epoch averages as one never stopped.
        for metric in (self.val_acc_best, self.train_acc, self.train_loss):
            metric.persistent(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor]):
        x, y = batch
        logits = self.net(x)
        return F.cross_entropy(logits, y), logits, y

    # -- training -------------------------------------------------------------------
    def on_train_start(self) -> None:
        # The sanity-check validation pass must not count as a best score.
        self.val_acc_best.reset()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, logits, y = self._shared_step(batch)
        # Epoch aggregates are plain metric updates (no per-step compute or sync); the
        # per-step curves are built only on the steps the Trainer writes to its loggers.
        self.train_loss.update(loss.detach(), weight=y.numel())
        self.train_acc.update(logits.detach(), y)
        if is_logging_step(self._trainer):
            # Checked where the value is read anyway, so no extra device sync per step; the
            # run stops before the epoch ends, leaving the last good checkpoint untouched.
            self._check_finite(loss)
            batch_acc = (logits.detach().argmax(dim=-1) == y).float().mean()
            self.log_dict({"train/loss": loss.detach(), "train/acc": batch_acc}, prog_bar=True)
        return loss

    def _check_finite(self, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        if math.isfinite(value):
            self._last_finite_loss = value
            return
        last = getattr(self, "_last_finite_loss", None)
        raise NonFiniteLossError(
            f"the training loss became {value} at step {self.global_step} "
            f"(epoch {self.current_epoch}); last finite loss: "
            f"{'none seen' if last is None else f'{last:.4g}'}. The last good checkpoint is "
            "kept. Fix: lower optimizer.lr, set trainer.gradient_clip_val=1.0, or use "
            "cell=lstm/gru instead of rnn."
        )

    def on_train_epoch_end(self) -> None:
        epoch_loss = self.train_loss.compute()
        self._check_finite(epoch_loss)
        # compute() already reduces across DDP ranks; sync_dist just tells Lightning so.
        self.log("train/loss_epoch", epoch_loss, sync_dist=True)
        self.log("train/acc_epoch", self.train_acc.compute(), prog_bar=True, sync_dist=True)
        self.train_loss.reset()
        self.train_acc.reset()

    # -- validation / test -------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int) -> None:
        loss, logits, y = self._shared_step(batch)
        self.val_loss(loss, weight=y.numel())
        self.val_acc(logits, y)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        loss, logits, y = self._shared_step(batch)
        self.test_loss(loss, weight=y.numel())
        self.test_acc(logits, y)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        # TensorBoard's HParams tab compares runs on this tag.
        self.log("hp_metric", self.test_acc.compute(), sync_dist=True)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.net(x).softmax(dim=-1)

    # -- optimisation ------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        opt = instantiate(self.hparams.optimizer)(params=self.parameters())
        sched_cfg = self.hparams.scheduler
        if not sched_cfg:
            return opt
        interval = sched_cfg.get("interval", "epoch")
        factory = instantiate(sched_cfg["scheduler"])
        horizon = (
            int(self.trainer.estimated_stepping_batches)
            if interval == "step"
            else int(self.trainer.max_epochs)
        )
        params = inspect.signature(factory.func).parameters
        fill = {
            k: horizon
            for k in ("T_max", "total_steps")
            if k in params and k not in factory.keywords
        }
        scheduler = factory(opt, **fill)
        return {
            "optimizer": opt,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": interval,
                "monitor": sched_cfg.get("monitor", "val/loss"),
            },
        }
