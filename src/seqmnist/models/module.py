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
from torch import nn
from torchmetrics import MaxMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from seqmnist.core.checks import Rule, number
from seqmnist.core.errors import NonFiniteLossError
from seqmnist.core.internals import is_logging_step
from seqmnist.models.anytime import (
    anytime_cross_entropy,
    check_anytime_loss,
    report_steps,
    step_weights,
)
from seqmnist.models.metrics import WeightedMean
from seqmnist.models.nets import RecurrentClassifier

LABEL_SMOOTHING: Rule = number(lambda v: 0 <= v < 1, "a number in [0, 1)")


def _plain(cfg: Any) -> Any:
    """Config nodes -> plain containers, so checkpoints hold only primitives."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg) if isinstance(cfg, Mapping) else cfg


def _model_states(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The module states a checkpoint holds: ``state_dict``, and with weight averaging
    (conf/callbacks/ema.yaml) also the trained weights a resumed run continues from, which
    Lightning's WeightAveraging keeps under ``current_model_state`` (``state_dict`` then holds
    the averaged weights that evaluation and prediction load)."""
    return [checkpoint[k] for k in ("state_dict", "current_model_state") if k in checkpoint]


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
        label_smoothing: cross-entropy label smoothing of the training loss; validation and
            test losses are plain cross-entropy, comparable across runs.
        anytime_loss: how the training loss weighs the answer after each step
            (:mod:`seqmnist.models.anytime`): ``none`` (the last step only), ``uniform`` or
            ``linear``. Validation and test losses stay the last step's.

    Validation and test also log the accuracy after a quarter, half and three quarters of
    the sequence (``val/acc_step7``, ``val/acc_step14``, ``val/acc_step21`` for 28 rows),
    so TensorBoard shows the anytime curve move during training (unidirectional nets only:
    a bidirectional net's step answers have read everything).
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        input_size: int = 28,
        num_classes: int = 10,
        class_names: list[str] | None = None,
        label_smoothing: float = 0.0,
        anytime_loss: str = "none",
    ) -> None:
        super().__init__()
        LABEL_SMOOTHING.check("model.label_smoothing", label_smoothing)
        check_anytime_loss(anytime_loss, bool(_plain(net).get("bidirectional", False)))
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
        # (logging steps, epoch end). A check per step would read the loss back to the
        # host every step: a device sync on a GPU.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.train_loss = WeightedMean()
        self.val_loss = WeightedMean()
        self.test_loss = WeightedMean()
        self.val_acc_best = MaxMetric()
        # Accuracy after the steps of report_steps(T), known once a batch shows T.
        self.val_step_acc = nn.ModuleList(
            MulticlassAccuracy(num_classes, average="micro") for _ in range(3)
        )
        self.test_step_acc = nn.ModuleList(
            MulticlassAccuracy(num_classes, average="micro") for _ in range(3)
        )
        # The latest logged training-step values as Python floats, for the progress bar.
        self.progress_values: dict[str, float] = {}
        # Kept in checkpoints so a resumed run still knows its best validation accuracy, and
        # a run resumed mid-epoch reports the same epoch averages as one never stopped.
        for metric in (self.val_acc_best, self.train_acc, self.train_loss):
            metric.persistent(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _training_loss(self, batch: tuple[torch.Tensor, torch.Tensor]):
        """The training loss (every step's answer weighted under ``anytime_loss``), the
        final logits and the targets."""
        x, y = batch
        smoothing = self.hparams.label_smoothing
        weighting = self.hparams.get("anytime_loss", "none")
        if weighting == "none":
            logits = self.net(x)
            return F.cross_entropy(logits, y, label_smoothing=smoothing), logits, y
        t = x.shape[1]
        _, steps = self.net(x, steps=range(1, t + 1))
        weights = step_weights(weighting, t, device=steps.device)
        loss = anytime_cross_entropy(steps, y, weights, smoothing)
        return loss, steps[:, -1], y

    def _evaluation_step(self, batch, stage: str):
        """Last-step loss and logits, and the accuracy after each report step logged as
        ``{stage}/acc_step{k}``. In float32 whatever the training precision (autocast off):
        a run's val/test figures are those ``evaluate``, ``predict`` and an export give."""
        with torch.autocast(self.device.type, enabled=False):
            return self._evaluation_step_float32(batch, stage)

    def _evaluation_step_float32(self, batch, stage: str):
        x, y = batch
        if self.net.bidirectional:  # its step answers have read everything: none reported
            logits = self.net(x)
            return F.cross_entropy(logits, y), logits, y
        steps = report_steps(x.shape[1])
        logits, early = self.net(x, steps=steps)
        metrics = self.val_step_acc if stage == "val" else self.test_step_acc
        for i, (metric, k) in enumerate(zip(metrics, steps, strict=False)):
            metric(early[:, i], y)
            self.log(f"{stage}/acc_step{k}", metric, on_step=False, on_epoch=True)
        return F.cross_entropy(logits, y), logits, y

    # -- training -------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, logits, y = self._training_loss(batch)
        # Epoch aggregates are plain metric updates (no per-step compute or sync); the
        # per-step curves are built only on the steps the Trainer writes to its loggers.
        self.train_loss.update(loss.detach(), weight=y.numel())
        self.train_acc.update(logits.detach(), y)
        if is_logging_step(self._trainer):
            batch_acc = (logits.detach().argmax(dim=-1) == y).float().mean()
            # One read back to the host, on the steps the loggers write. The progress bar
            # shows these floats (``progress_values``) rather than ``prog_bar=True`` values,
            # which Lightning reads back from the device at every batch's refresh.
            value, acc = torch.stack([loss.detach().float(), batch_acc]).tolist()
            self.progress_values = {"train/loss": value, "train/acc": acc}
            # Checked where the value is read anyway; the run stops before the epoch ends,
            # leaving the last good checkpoint untouched.
            self._check_finite(value)
            self.log_dict({"train/loss": loss.detach(), "train/acc": batch_acc})
        return loss

    def _check_finite(self, value: float) -> None:
        """Stop on a NaN/inf loss, on every DDP rank at the same step.

        Under DDP the ranks agree first (one tiny all-reduce on the steps where the loss is
        read anyway): a rank raising alone would leave the others waiting in the next
        gradient all-reduce.
        """
        bad = not math.isfinite(value)
        trainer = self._trainer
        where = ""
        if trainer is not None and trainer.world_size > 1:
            # Every rank learns the highest rank that saw it (0: none did).
            flag = torch.tensor([trainer.global_rank + 1 if bad else 0], device=self.device)
            seen_on = int(trainer.strategy.reduce(flag, reduce_op="max"))
            bad, where = seen_on > 0, f" on rank {seen_on - 1}"
        if not bad:
            self._last_finite_loss = value
            return
        last = getattr(self, "_last_finite_loss", None)
        seen = value if not math.isfinite(value) else "non-finite"
        raise NonFiniteLossError(
            f"the training loss became {seen}{where} at step {self.global_step} "
            f"(epoch {self.current_epoch}); last finite loss: "
            f"{'none seen' if last is None else f'{last:.4g}'}. The last good checkpoint is "
            "kept. Fix: lower optimizer.lr, set trainer.gradient_clip_val=1.0, or use "
            "cell=lstm/gru instead of rnn."
        )

    def on_train_epoch_end(self) -> None:
        epoch_loss = self.train_loss.compute()  # the same on every rank: compute() reduces
        self._check_finite(float(epoch_loss))
        # compute() already reduces across DDP ranks; sync_dist just tells Lightning so.
        self.log("train/loss_epoch", epoch_loss, sync_dist=True)
        self.log("train/acc_epoch", self.train_acc.compute(), prog_bar=True, sync_dist=True)
        self.train_loss.reset()
        self.train_acc.reset()

    # -- validation / test -------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int) -> None:
        loss, logits, y = self._evaluation_step(batch, "val")
        self.val_loss(loss, weight=y.numel())
        self.val_acc(logits, y)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        # The sanity check's few batches are no epoch: not a best score. (Never reset at the
        # fit's start: a resumed run's best is restored from its checkpoint.)
        if self._trainer is not None and self._trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        loss, logits, y = self._evaluation_step(batch, "test")
        self.test_loss(loss, weight=y.numel())
        self.test_acc(logits, y)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        # TensorBoard's HParams tab compares runs on this tag.
        self.log("hp_metric", self.test_acc.compute(), sync_dist=True)

    # -- checkpoints under DDP ------------------------------------------------------------
    def _epoch_sums(self) -> dict[str, Metric]:
        """The training metrics whose states are sums over this rank's part of the epoch."""
        return {"train_loss": self.train_loss, "train_acc": self.train_acc}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Only rank 0 writes the file: its partial epoch sums alone would lose the other
        # ranks' share. Save the sums over all ranks (every rank runs this hook).
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return
        for name, metric in self._epoch_sums().items():
            metric.sync()
            for key, value in metric.metric_state.items():
                for state in _model_states(checkpoint):
                    state[f"{name}.{key}"] = value.detach().clone()
            metric.unsync()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        if "train_loss.mean_value" in state:  # saved when train_loss was a MeanMetric
            # Whose nan_strategy="disable" counted each step once: a sum of batch means and
            # a number of steps. In WeightedMean's units, one step is one batch of samples.
            batch = checkpoint.get("datamodule_hyper_parameters", {}).get("batch_size", 1)
            state["train_loss.total"] = state.pop("train_loss.mean_value") * batch
            state["train_loss.weight"] = state["train_loss.weight"] * batch
        # The saved sums are every rank's together: rank 0 carries them on, the others start
        # from zero, so the epoch's reduced mean counts each sample once.
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1 or trainer.global_rank == 0:
            return
        for state in _model_states(checkpoint):
            for name in self._epoch_sums():
                for key in [k for k in state if k.startswith(f"{name}.")]:
                    state[key] = torch.zeros_like(state[key])

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        with torch.autocast(self.device.type, enabled=False):  # as evaluation: float32
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
