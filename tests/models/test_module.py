"""SeqClassifier: learning on a learnable task, logged metrics, optimizers and schedulers."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from seqmnist.data import SeqMNISTDataModule
from seqmnist.models.module import SeqClassifier

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01}


def make_trainer(tmp_path: Path, **kw) -> L.Trainer:
    kw = {
        "max_epochs": 1,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        **kw,
    }
    return L.Trainer(**kw)


def test_learns_a_learnable_task(synthetic_root: Path, tmp_path: Path) -> None:
    L.seed_everything(0)
    dm = SeqMNISTDataModule(root=str(synthetic_root), batch_size=25, val_size=100, download=False)
    model = SeqClassifier(net={"cell": "gru", "hidden_size": 32}, optimizer=ADAM)
    trainer = make_trainer(tmp_path, max_epochs=15, num_sanity_val_steps=0)
    before = trainer.test(model, datamodule=dm, verbose=False)[0]["test/acc"]
    trainer.fit(model, datamodule=dm)  # 20 steps/epoch x 15 = 300 steps
    m = dict(trainer.callback_metrics)
    for key in (
        "train/loss",
        "train/acc",
        "train/loss_epoch",
        "train/acc_epoch",
        "val/loss",
        "val/acc",
        "val/acc_best",
    ):
        assert key in m, key
    assert m["val/acc_best"] >= m["val/acc"] - 1e-6
    # Step values reach the bar as host floats, not as prog_bar values that Lightning would
    # read back from the device at every batch's refresh.
    assert "train/loss" not in trainer.progress_bar_metrics
    assert set(model.progress_values) == {"train/loss", "train/acc"}
    assert all(type(v) is float for v in model.progress_values.values())
    after = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert before < 0.3
    assert after["test/acc"] > 0.9
    assert after["test/loss"] < 0.5


def test_hparams_are_plain_and_rebuild_the_model(tmp_path: Path) -> None:
    model = SeqClassifier(
        net={"cell": "lstm", "hidden_size": 8, "num_layers": 2},
        optimizer=ADAM,
        input_size=1,
        class_names=[str(i) for i in range(10)],
    )
    assert isinstance(model.hparams["net"], dict)
    again = SeqClassifier(**model.hparams)
    again.load_state_dict(model.state_dict())
    x = torch.randn(2, 784, 1)
    model.eval()
    again.eval()
    assert torch.allclose(model(x), again(x))


@pytest.mark.parametrize(
    ("scheduler", "horizon_arg"),
    [
        (
            {
                "scheduler": {
                    "_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
                    "_partial_": True,
                },
                "interval": "step",
            },
            "T_max",
        ),
        (
            {
                "scheduler": {
                    "_target_": "torch.optim.lr_scheduler.OneCycleLR",
                    "_partial_": True,
                    "max_lr": 0.01,
                },
                "interval": "step",
            },
            "total_steps",
        ),
        (
            {
                "scheduler": {
                    "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                    "_partial_": True,
                    "mode": "max",
                },
                "interval": "epoch",
                "monitor": "val/acc",
            },
            None,
        ),
    ],
)
def test_schedulers_fill_their_horizon(
    synthetic_root: Path, tmp_path: Path, scheduler: dict, horizon_arg: str | None
) -> None:
    dm = SeqMNISTDataModule(root=str(synthetic_root), batch_size=50, val_size=100, download=False)
    model = SeqClassifier(
        net={"cell": "gru", "hidden_size": 8}, optimizer=ADAM, scheduler=scheduler
    )
    trainer = make_trainer(tmp_path, max_epochs=2)
    trainer.fit(model, datamodule=dm)
    sched = trainer.lr_scheduler_configs[0].scheduler
    if horizon_arg == "T_max":
        assert sched.T_max == 20  # 10 steps/epoch x 2 epochs
    elif horizon_arg == "total_steps":
        assert sched.total_steps == 20
    else:
        assert trainer.lr_scheduler_configs[0].monitor == "val/acc"


def _nan_after_calls(monkeypatch, root: Path, nan_when):
    """A small data module and a GRU model whose forward returns NaN when ``nan_when(call)``."""
    dm = SeqMNISTDataModule(root=str(root), batch_size=50, val_size=100, download=False)
    model = SeqClassifier(net={"cell": "gru", "hidden_size": 8}, optimizer=ADAM)
    real_forward = model.net.forward
    calls = {"n": 0}

    def forward(x, **kw):
        calls["n"] += 1
        out = real_forward(x, **kw)  # validation also asks for some steps' answers
        if not nan_when(calls["n"]):
            return out
        return (
            tuple(o * float("nan") for o in out) if isinstance(out, tuple) else out * float("nan")
        )

    monkeypatch.setattr(model.net, "forward", forward)
    return dm, model, calls


def test_non_finite_loss_stops_with_step_and_last_loss(
    synthetic_root: Path, tmp_path: Path, monkeypatch
) -> None:
    from seqmnist.core.errors import NonFiniteLossError, SeqMNISTError

    dm, model, _ = _nan_after_calls(monkeypatch, synthetic_root, lambda n: n > 3)
    trainer = make_trainer(tmp_path, max_epochs=1, log_every_n_steps=1, num_sanity_val_steps=0)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(model, datamodule=dm)
    assert isinstance(err.value, SeqMNISTError)  # entry points print it and mark the run failed
    msg = str(err.value)
    assert "nan at step 3" in msg and "last finite loss: 2." in msg and "gradient_clip_val" in msg


def test_non_finite_loss_between_logging_steps_is_caught_at_epoch_end(
    synthetic_root: Path, tmp_path: Path, monkeypatch
) -> None:
    from seqmnist.core.errors import NonFiniteLossError

    # A single bad batch, on a step that is not a logging step.
    dm, model, calls = _nan_after_calls(monkeypatch, synthetic_root, lambda n: n == 3)
    trainer = make_trainer(tmp_path, max_epochs=1, log_every_n_steps=1000, num_sanity_val_steps=0)
    with pytest.raises(NonFiniteLossError, match="training loss became nan"):
        trainer.fit(model, datamodule=dm)
    assert calls["n"] > 3  # the epoch ran on; its mean loss carried the NaN to the check


def test_checkpoints_from_when_the_loss_mean_was_a_mean_metric_still_load(tmp_path: Path) -> None:
    model = SeqClassifier(net={"cell": "lstm", "hidden_size": 8}, optimizer=ADAM)
    checkpoint = {"state_dict": dict(model.state_dict())}
    state = checkpoint["state_dict"]
    state["train_loss.mean_value"] = state.pop("train_loss.total")  # MeanMetric's name
    state["train_loss.mean_value"].fill_(6.0)
    state["train_loss.weight"].fill_(4.0)
    # MeanMetric(nan_strategy="disable") counted steps: 4 steps whose means summed to 6.
    checkpoint["datamodule_hyper_parameters"] = {"batch_size": 2}
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(state)
    assert (model.train_loss.total.item(), model.train_loss.weight.item()) == (12.0, 8.0)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_label_smoothing_changes_the_training_loss_only() -> None:
    torch.manual_seed(0)
    kw = {"net": {"cell": "gru", "hidden_size": 8}, "optimizer": ADAM}
    plain = SeqClassifier(**kw)
    smooth = SeqClassifier(**kw, label_smoothing=0.2)
    smooth.load_state_dict(plain.state_dict())
    batch = (torch.rand(6, 28, 28), torch.tensor([0, 1, 2, 3, 4, 5]))
    logits = plain.net(batch[0])
    expected = torch.nn.functional.cross_entropy(logits, batch[1], label_smoothing=0.2)
    assert torch.allclose(smooth.training_step(batch, 0), expected)
    assert not torch.allclose(plain.training_step(batch, 0), expected)
    # Validation and test losses are plain cross-entropy, comparable across settings.
    assert torch.allclose(
        smooth._evaluation_step(batch, "val")[0], plain._evaluation_step(batch, "val")[0]
    )


def test_label_smoothing_outside_0_1_is_refused() -> None:
    from seqmnist.core.errors import ConfigError

    with pytest.raises(ConfigError, match="model.label_smoothing=1.0"):
        SeqClassifier(net={"cell": "gru"}, optimizer=ADAM, label_smoothing=1.0)
