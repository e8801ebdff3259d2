"""Training on every step (model.anytime_loss): weights, the loss, the logged step accuracy."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from seqmnist.core.errors import ConfigError
from seqmnist.data import SeqMNISTDataModule
from seqmnist.models.anytime import report_steps, step_weights
from seqmnist.models.module import SeqClassifier
from tests.helpers import LAYOUTS
from tests.models.test_module import ADAM, make_trainer


def test_each_weighting_sums_to_one_as_documented() -> None:
    assert step_weights("none", 4).tolist() == [0.0, 0.0, 0.0, 1.0]
    assert step_weights("uniform", 4).tolist() == [0.25] * 4
    assert torch.allclose(step_weights("linear", 4), torch.tensor([0.1, 0.2, 0.3, 0.4]))
    for name in ("none", "uniform", "linear"):
        assert step_weights(name, 28).sum().item() == pytest.approx(1.0)


def test_report_steps_are_the_quarters_before_the_last() -> None:
    assert report_steps(28) == [7, 14, 21]
    assert report_steps(784) == [196, 392, 588]
    assert report_steps(2) == [1]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("weighting", ["uniform", "linear"])
def test_the_training_loss_is_the_weighted_sum_of_each_steps_cross_entropy(
    weighting: str,
) -> None:
    torch.manual_seed(0)
    kw = {"net": {"cell": "lstm", "hidden_size": 8}, "optimizer": ADAM, "label_smoothing": 0.1}
    model = SeqClassifier(**kw, anytime_loss=weighting)
    x, y = torch.rand(5, 6, 28), torch.tensor([0, 1, 2, 3, 4])
    # By hand: the head after each step t = 1..6, weighted 1/6 (uniform) or t/21 (linear).
    out, _ = model.net.rnn(x)
    total = sum(6 if weighting == "uniform" else 21 for _ in range(1))
    expected = sum(
        (1 if weighting == "uniform" else t + 1)
        / total
        * F.cross_entropy(model.net.head(out[:, t]), y, label_smoothing=0.1)
        for t in range(6)
    )
    assert torch.allclose(model.training_step((x, y), 0), expected, atol=1e-6)
    # `none` is the last step alone, as before the option existed.
    plain = SeqClassifier(**kw)
    plain.load_state_dict(model.state_dict())
    last = F.cross_entropy(model.net.head(out[:, -1]), y, label_smoothing=0.1)
    assert torch.allclose(plain.training_step((x, y), 0), last, atol=1e-6)


def test_an_unknown_weighting_or_a_bidirectional_net_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"model.anytime_loss='cubic'.*one of \['none'"):
        SeqClassifier(net={"cell": "gru"}, optimizer=ADAM, anytime_loss="cubic")
    with pytest.raises(ConfigError, match="bidirectional=false, or model.anytime_loss=none"):
        SeqClassifier(
            net={"cell": "gru", "bidirectional": True}, optimizer=ADAM, anytime_loss="uniform"
        )
    # A bidirectional net trained on its last step is fine.
    SeqClassifier(net={"cell": "gru", "bidirectional": True}, optimizer=ADAM)


def fit(root: Path, tmp_path: Path, weighting: str) -> dict[str, float]:
    L.seed_everything(0)
    dm = SeqMNISTDataModule(root=str(root), batch_size=25, val_size=100, download=False)
    model = SeqClassifier(
        net={"cell": "gru", "hidden_size": 32}, optimizer=ADAM, anytime_loss=weighting
    )
    trainer = make_trainer(tmp_path, max_epochs=15, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics.update(trainer.test(model, datamodule=dm, verbose=False)[0])
    return metrics


def test_every_step_training_answers_earlier(synthetic_root: Path, tmp_path: Path) -> None:
    # The synthetic digit c lights rows 2c+3 and 2c+4: after 14 rows classes 0-5 can be told
    # apart, the rest only as "6 to 9", so an anytime answer there is right ~70% of the time.
    last = fit(synthetic_root, tmp_path / "none", "none")
    every = fit(synthetic_root, tmp_path / "linear", "linear")
    for m in (last, every):
        assert {"val/acc_step7", "val/acc_step14", "val/acc_step21"} <= set(m)
        assert {"test/acc_step7", "test/acc_step14", "test/acc_step21"} <= set(m)
    assert last["test/acc"] > 0.9 and every["test/acc"] > 0.8  # both learned the task
    assert every["val/acc_step14"] > 0.55
    assert every["val/acc_step14"] > last["val/acc_step14"] + 0.3
    assert every["test/acc_step21"] > every["test/acc_step14"] > every["test/acc_step7"]


@pytest.mark.parametrize(
    "layout", [c for c in LAYOUTS if not c["bidirectional"]], ids=lambda c: c["sequence"]
)
def test_every_cell_and_layout_trains_on_every_step(
    synthetic_root: Path, tmp_path: Path, layout: dict
) -> None:
    keys = ("dataset", "sequence", "step_pixels", "permutation_seed")
    dm_kwargs = {k: layout[k] for k in keys if k in layout}
    dm = SeqMNISTDataModule(
        root=str(synthetic_root), batch_size=20, val_size=40, download=False, **dm_kwargs
    )
    net = {"cell": layout["cell"], "num_layers": layout["layers"], "hidden_size": 8}
    model = SeqClassifier(
        net=net, optimizer=ADAM, anytime_loss="linear", input_size=dm.layout.input_size
    )
    before = [p.detach().clone() for p in model.parameters()]
    trainer = make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, datamodule=dm)
    t = dm.layout.seq_len
    logged = {k for k in trainer.callback_metrics if k.startswith("val/acc_step")}
    assert logged == {f"val/acc_step{k}" for k in report_steps(t)}
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
