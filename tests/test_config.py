"""Config composition: every group option composes and builds; bad values are rejected."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from seqmnist.config import validate
from seqmnist.errors import ConfigError
from seqmnist.train import CONFIG_DIR, instantiate_group

GROUPS = ["cell", "optimizer", "scheduler", "data", "trainer", "logger", "callbacks", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def make_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):  # normally set by Hydra at run time
        cfg.paths.output_dir = "/tmp/seqmnist-test-out"
        cfg.run_name = "test-run"  # uses ${hydra:...}, which only a running app resolves
    return cfg


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
    assert make_cfg("data.root=/x").data.root == "/x"


def test_builds_model_callbacks_loggers(synthetic_root: Path) -> None:
    cfg = make_cfg("logger=many", "callbacks=early_stopping", "scheduler=onecycle")
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, input_size=dm.input_size, num_classes=dm.num_classes)
    assert model.net.rnn.hidden_size == 128
    names = sorted(type(c).__name__ for c in instantiate_group(cfg.callbacks))
    assert names == [
        "EarlyStopping",
        "FaultTolerance",
        "LearningRateMonitor",
        "ModelCheckpoint",  # best + last.ckpt at epoch ends
        "ModelCheckpoint",  # last.ckpt every N steps
        "RichModelSummary",
        "RichProgressBar",
    ]
    assert sorted(type(lg).__name__ for lg in instantiate_group(cfg.logger)) == [
        "CSVLogger",
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
