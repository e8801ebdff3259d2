"""Config composition: every group option composes and builds; bad values are rejected."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from seqmnist.core.errors import ConfigError
from seqmnist.data import SeqMNISTDataModule
from seqmnist.models import RecurrentClassifier
from seqmnist.training.build import build_group, build_trainer
from seqmnist.training.config import validate
from seqmnist.training.settings import SHORT_KEYS, net_of, run_settings
from tests.helpers import CONFIG_DIR, compose_config

GROUPS = ["cell", "optimizer", "scheduler", "data", "trainer", "logger", "callbacks", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def make_cfg(*overrides: str):
    return compose_config(*overrides)


def test_defaults_are_the_tutorial_recipe() -> None:
    cfg = make_cfg()
    assert cfg.model.net.cell == "lstm" and cfg.model.net.forget_bias == 1.0
    assert (cfg.layers, cfg.hidden, cfg.dropout, cfg.bidirectional) == (1, 128, 0.0, False)
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 0.001
    assert cfg.data.batch_size == 128 and cfg.data.sequence == "row" and cfg.data.dataset == "mnist"
    assert cfg.model.scheduler is None
    validate(cfg)


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group: str, option: str) -> None:
    cfg = make_cfg(f"{group}={option}")
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
            validate(cfg)
    else:
        validate(cfg)
    OmegaConf.to_container(cfg.model, resolve=True)  # every interpolation resolves


def test_short_keys_reach_the_network() -> None:
    cfg = make_cfg(
        "cell=gru",
        "layers=3",
        "hidden=200",
        "dropout=0.2",
        "bidirectional=true",
        "optimizer=rmsprop",
        "optimizer.lr=0.002",
        "data.batch_size=64",
    )
    net = cfg.model.net
    assert (net.cell, net.num_layers, net.hidden_size, net.dropout, net.bidirectional) == (
        "gru",
        3,
        200,
        0.2,
        True,
    )
    assert "forget_bias" not in net
    assert cfg.model.optimizer.lr == 0.002 and cfg.model.optimizer._target_ == "torch.optim.RMSprop"


def test_trainer_keys_without_plus() -> None:
    cfg = make_cfg(
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "trainer.gradient_clip_val=1.0",
        "trainer.precision=bf16-mixed",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.deterministic=true",
    )
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_epochs == 2 and trainer.gradient_clip_val == 1.0
    assert trainer.limit_train_batches == 3


def test_data_root_from_env(monkeypatch) -> None:
    monkeypatch.setenv("SEQMNIST_DATA_ROOT", "/some/where")
    assert make_cfg().data.root == "/some/where"
    monkeypatch.delenv("SEQMNIST_DATA_ROOT")
    assert make_cfg().data.root == "./data"
    assert make_cfg("paths.root_dir=/project").data.root == "/project/data"
    assert make_cfg("data.root=/x").data.root == "/x"


def test_builds_model_callbacks_loggers(synthetic_root: Path) -> None:
    cfg = make_cfg("logger=many", "callbacks=early_stopping", "scheduler=onecycle")
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, input_size=dm.input_size, num_classes=dm.num_classes)
    assert model.net.rnn.hidden_size == 128
    names = sorted(type(c).__name__ for c in build_group(cfg.callbacks))
    assert names == [
        "EarlyStopping",
        "FaultTolerance",
        "LearningRateMonitor",
        "ModelCheckpoint",  # best + last.ckpt at epoch ends
        "ModelCheckpoint",  # last.ckpt every N steps
        "ProgressBar",  # our RichProgressBar without v_num
        "RichModelSummary",
    ]
    assert sorted(type(lg).__name__ for lg in build_group(cfg.logger)) == [
        "ResumableCSVLogger",
        "TensorBoardLogger",
    ]


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("layers=0", "layers", "integer >= 1"),
        ("hidden=-5", "hidden", "integer >= 1"),
        ("dropout=1.5", "dropout", "[0, 1)"),
        ("bidirectional=maybe", "bidirectional", "true or false"),
        ("optimizer.lr=0", "optimizer.lr", "> 0"),
        ("data.batch_size=0", "data.batch_size", "integer >= 1"),
        ("trainer.max_epochs=0", "trainer.max_epochs", "integer >= 1"),
        ("data.sequence=spiral", "data.sequence", "row"),
        ("model.net.cell=transformer", "model.net.cell", "cell=NAME"),
    ],
)
def test_bad_values_name_key_and_allowed(override: str, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(override))
    assert key in str(err.value) and allowed in str(err.value)


@pytest.mark.parametrize(
    ("short", "value", "kwargs"),
    [
        ("layers", 0, {"num_layers": 0}),
        ("hidden", -5, {"hidden_size": -5}),
        ("dropout", 1.5, {"dropout": 1.5}),
        ("bidirectional", "maybe", {"bidirectional": "maybe"}),
    ],
)
def test_a_short_key_and_the_network_share_one_rule(short: str, value, kwargs: dict) -> None:
    """The config check names the short key; the constructor its own argument; both say the
    same about what is allowed, because both use the network's rule."""
    with pytest.raises(ConfigError) as from_config:
        validate(make_cfg(f"{short}={value}"))
    with pytest.raises(ConfigError) as from_net:
        RecurrentClassifier(**kwargs)
    arg = SHORT_KEYS[short]
    assert str(from_config.value).startswith(f"{short}={value!r} is not allowed")
    assert str(from_net.value).startswith(f"{arg}={value!r} is not allowed")
    allowed = str(from_net.value).split(" must be ", 1)[1]
    assert str(from_config.value).endswith(allowed)
    # The config file maps the short key to that argument.
    assert OmegaConf.select(make_cfg(), f"model.net.{arg}") == make_cfg()[short]


@pytest.mark.parametrize(
    ("key", "value"), [("sequence", "spiral"), ("batch_size", 0), ("dataset", "cifar")]
)
def test_a_data_key_and_the_data_module_say_the_same(key: str, value) -> None:
    with pytest.raises(ConfigError) as from_config:
        validate(make_cfg(f"data.{key}={value}"))
    with pytest.raises(ConfigError) as from_module:
        SeqMNISTDataModule(**{key: value})
    assert str(from_config.value) == str(from_module.value)
    assert str(from_config.value).startswith(f"data.{key}={value!r} is not allowed")


def test_step_pixels_has_one_message() -> None:
    with pytest.raises(ConfigError) as from_config:
        validate(make_cfg("data.sequence=patch", "data.step_pixels=5"))
    with pytest.raises(ConfigError) as from_module:
        SeqMNISTDataModule(sequence="patch", step_pixels=5)
    assert str(from_config.value) == str(from_module.value)
    assert "divides 784" in str(from_config.value) and "112" in str(from_config.value)


def test_lightning_refusing_a_trainer_value_is_our_error() -> None:
    with pytest.raises(ConfigError) as err:
        build_trainer(make_cfg("trainer.precision=banana"), logger=False)
    msg = str(err.value)
    assert msg.startswith("trainer: ") and "banana" in msg and "Fix:" in msg
    assert "Error in call to target" not in msg


def test_the_progress_bar_shows_no_logger_version(synthetic_root, tmp_path) -> None:
    from seqmnist.training.progress import ProgressBar
    from tests.helpers import train_in_process

    shown: list[dict] = []

    class Spy(ProgressBar):
        def get_metrics(self, trainer, pl_module):
            shown.append(super().get_metrics(trainer, pl_module))
            return shown[-1]

    (bar,) = [c for c in build_group(make_cfg().callbacks) if isinstance(c, ProgressBar)]
    assert type(bar) is ProgressBar
    # One redraw a second: Lightning's 100 a second cost a terminal run ~12%.
    assert bar.refresh_rate == 1 and bar.is_enabled
    import seqmnist.training.progress as progress

    original = progress.ProgressBar
    progress.ProgressBar = Spy
    try:
        train_in_process(synthetic_root, tmp_path / "run", "trainer.enable_progress_bar=true")
    finally:
        progress.ProgressBar = original
    assert shown and all("v_num" not in items for items in shown)
    # The bar shows the step values the module read on its logging steps.
    assert any("train/loss" in items and "train/acc" in items for items in shown)
    assert any("val/acc" in items for items in shown)


def test_run_settings_of_a_composed_config() -> None:
    cfg = compose_config(
        "cell=gru",
        "layers=3",
        "hidden=200",
        "optimizer=rmsprop",
        "scheduler=onecycle",
        "trainer.gradient_clip_val=1.0",
    )
    s = run_settings(cfg)
    assert (s["cell"], s["layers"], s["hidden"], s["optimizer"]) == ("gru", 3, 200, "RMSprop")
    assert s["scheduler"] == "OneCycleLR" and s["gradient_clip_val"] == 1.0
    assert (s["dataset"], s["sequence"], s["seed"], s["max_epochs"]) == ("mnist", "row", 42, 20)
    # The short keys map back to the network's arguments, for the run's one-line name.
    assert net_of(s) == {
        "cell": "gru",
        "num_layers": 3,
        "hidden_size": 200,
        "dropout": 0.0,
        "bidirectional": False,
    }
