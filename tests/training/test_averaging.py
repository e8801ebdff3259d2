"""Weight averaging (callbacks=ema): the average's arithmetic, and that the averaged weights
are the ones validated, checkpointed, tested after training, evaluated and predicted with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seqmnist.core.errors import ConfigError
from seqmnist.inference.checkpoints import load_checkpoint
from seqmnist.reports.evaluation import evaluate_checkpoint
from seqmnist.training.averaging import EMAWeights, ema_with_warmup
from tests.helpers import FAST, best_ckpt, train_in_process


def test_the_decay_warms_up_to_its_value() -> None:
    update = ema_with_warmup(0.9)
    avg, cur = [torch.zeros(3)], [torch.ones(3)]
    # After n updates so far the old average keeps min(0.9, (1 + n) / (10 + n)) of itself.
    expected = 0.0
    for n in range(100):
        update(avg, cur, torch.tensor(n))
        keep = min(0.9, (1 + n) / (10 + n))
        expected = keep * expected + (1 - keep) * 1.0
        assert torch.allclose(avg[0], torch.full((3,), expected)), n
    assert keep == 0.9  # the warm-up ended within the loop


def test_a_decay_outside_0_1_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"callbacks\.weight_averaging\.decay=1\.5"):
        EMAWeights(decay=1.5)


def net_weights(state: dict) -> dict[str, torch.Tensor]:
    return {k[4:]: v for k, v in state.items() if k.startswith("net.")}


@pytest.fixture(scope="module")
def ema_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("ema") / "run"
    overrides = [o for o in FAST if not o.startswith(("trainer.max_epochs", "trainer.limit_train"))]
    metrics = train_in_process(
        synthetic_root,
        run_dir,
        *overrides,
        "trainer.max_epochs=2",
        "callbacks=ema",
        "optimizer.lr=0.01",
        "callbacks.weight_averaging.decay=0.9",
    )
    assert metrics["status"] == "completed"
    return run_dir, metrics


def accuracy_and_loss(weights: dict, ckpt: Path, root: Path) -> tuple[float, float]:
    loaded = load_checkpoint(ckpt)
    loaded.model.net.load_state_dict(weights)
    dm = loaded.data.datamodule(root=str(root), download=False)
    dm.setup("test")
    with torch.no_grad():
        logits = loaded.model.net(dm.test_set.inputs)
    y = dm.test_set.targets
    return float((logits.argmax(-1) == y).float().mean()), float(F.cross_entropy(logits, y))


def test_checkpoints_hold_the_average_and_keep_the_trained_weights(ema_run) -> None:
    run_dir, _ = ema_run
    for ckpt in (best_ckpt(run_dir), run_dir / "checkpoints" / "last.ckpt"):
        saved = torch.load(ckpt, weights_only=True)
        averaged, trained = (
            net_weights(saved["state_dict"]),
            net_weights(saved["current_model_state"]),
        )
        assert averaged.keys() == trained.keys()
        assert any(not torch.equal(averaged[k], trained[k]) for k in averaged)
        assert int(saved["averaging_state"]["n_averaged"]) > 0


def test_test_evaluate_and_predict_use_the_averaged_weights(
    ema_run, synthetic_root: Path, tmp_path: Path
) -> None:
    run_dir, metrics = ema_run
    ckpt = best_ckpt(run_dir)
    saved = torch.load(ckpt, weights_only=True)
    averaged, trained = net_weights(saved["state_dict"]), net_weights(saved["current_model_state"])

    # evaluate and predict load through load_checkpoint: the averaged weights.
    loaded = load_checkpoint(ckpt)
    for name, value in loaded.model.net.state_dict().items():
        assert torch.equal(value, averaged[name]), name

    # The test after training measured the averaged weights, not the trained ones.
    acc, loss = accuracy_and_loss(averaged, ckpt, synthetic_root)
    _, loss_trained = accuracy_and_loss(trained, ckpt, synthetic_root)
    assert metrics["test/acc"] == pytest.approx(acc, abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(loss, rel=1e-4)
    assert loss_trained != pytest.approx(loss, rel=1e-4)

    result = evaluate_checkpoint(
        ckpt,
        tmp_path / "eval",
        data_root=synthetic_root,
        device="cpu",
        download=False,
        tensorboard=False,
    )
    assert result["metrics"]["accuracy"] == pytest.approx(acc, abs=1e-6)
