"""trainer.precision=auto: bf16 mixed precision where the hardware has bf16 units, float32
elsewhere; an explicit bf16 on hardware without them is one clear error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from seqmnist.core.errors import ConfigError
from seqmnist.training import precision
from tests.helpers import compose_config, train_in_process


def cpu_with(monkeypatch: pytest.MonkeyPatch, *, avx512_bf16: bool, amx: bool = False) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "units", "chosen"),
    [
        (True, True, "AMX", "bf16-mixed"),
        (True, False, "AVX512-BF16", "bf16-mixed"),
        (False, False, None, "32-true"),  # AVX2 only: the fallback
    ],
)
def test_auto_takes_bf16_only_where_the_cpu_has_the_units(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, units, chosen: str
) -> None:
    cpu_with(monkeypatch, avx512_bf16=avx512_bf16, amx=amx)
    assert precision.cpu_bf16_units() == units
    for accelerator in ("auto", "cpu"):
        assert precision.choose("auto", accelerator) == chosen
    assert precision.choose("32-true", "cpu") == "32-true"  # the switch off, everywhere
    assert precision.choose("16-mixed", "cpu") == "16-mixed"  # others as given


def test_bf16_asked_for_on_a_cpu_without_the_units_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu_with(monkeypatch, avx512_bf16=False)
    for asked in ("bf16-mixed", "bf16-true"):
        with pytest.raises(ConfigError) as err:
            precision.choose(asked, "cpu")
        text = str(err.value)
        assert f"trainer.precision={asked}: this CPU has no bf16 units" in text
        assert "Fix: trainer.precision=auto (float32 here) or trainer.precision=32-true" in text
    cpu_with(monkeypatch, avx512_bf16=True)
    assert precision.choose("bf16-mixed", "cpu") == "bf16-mixed"


def test_on_a_gpu_the_gpus_own_bf16_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_with(monkeypatch, avx512_bf16=True)  # the CPU's units do not count for a GPU run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    native = {"value": False}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **_: native["value"])
    assert precision.choose("auto", "gpu") == "32-true"
    assert precision.choose("auto", "auto") == "32-true"
    with pytest.raises(ConfigError, match="this GPU has no native bf16"):
        precision.choose("bf16-mixed", "gpu")
    native["value"] = True
    assert precision.choose("auto", "gpu") == "bf16-mixed"
    assert precision.choose("auto", "cpu") == "bf16-mixed"  # the CPU's own rule


def test_the_choice_is_written_into_the_config_and_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cpu_with(monkeypatch, avx512_bf16=False)
    cfg = compose_config()
    assert cfg.trainer.precision == "auto"  # the default
    with caplog.at_level(logging.INFO, logger="seqmnist.precision"):
        assert precision.resolve(cfg) == "32-true"
    assert cfg.trainer.precision == "32-true"
    assert "precision: 32-true (trainer.precision=auto: no bf16 units)" in caplog.text


@pytest.mark.parametrize(("units", "chosen"), [(True, "bf16-mixed"), (False, "32-true")])
def test_a_run_saves_the_precision_it_trained_in(
    synthetic_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    units: bool,
    chosen: str,
) -> None:
    cpu_with(monkeypatch, avx512_bf16=units)
    run_dir = tmp_path / "run"
    metrics = train_in_process(synthetic_root, run_dir, "trainer.limit_train_batches=2")
    assert metrics["status"] == "completed"
    saved = OmegaConf.load(run_dir / "resolved_config.yaml")
    assert saved.trainer.precision == chosen  # resume= trains on in the same precision


def test_bf16_clips_the_gradients_of_a_fused_optimizer(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning's bf16-mixed refuses to clip for fused Adam (written for fp16's GradScaler);
    bf16 has no scaler, so the project's plugin clips: the experiments clip at 1.0."""
    cpu_with(monkeypatch, avx512_bf16=True)
    norms: list[float] = []
    real = torch.nn.utils.clip_grad_norm_

    def clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        total = real(parameters, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))
        norms.append((float(total), float(after), max_norm))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    metrics = train_in_process(
        synthetic_root,
        tmp_path / "run",
        "trainer.limit_train_batches=3",
        "trainer.gradient_clip_val=0.01",  # small: every step is clipped
        "optimizer.lr=0.01",
    )
    assert metrics["status"] == "completed", metrics.get("error")
    saved = OmegaConf.load(tmp_path / "run" / "resolved_config.yaml")
    assert saved.trainer.precision == "bf16-mixed"
    assert len(norms) == 3
    for before, after, max_norm in norms:
        assert before > max_norm and after == pytest.approx(max_norm, rel=1e-3)
