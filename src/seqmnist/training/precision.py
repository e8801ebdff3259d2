"""The precision a run trains in: bf16 mixed precision where the hardware has bf16 units,
float32 elsewhere.

``trainer.precision=auto`` (the default, conf/trainer/default.yaml) becomes ``bf16-mixed`` on
a CPU with bf16 units (AVX512-BF16 or AMX) or a GPU that computes in bf16, and ``32-true``
everywhere else; the run's saved config holds the choice, so ``resume=`` keeps it on any
machine. Asked for explicitly where the units are missing, bf16 is one config error: such
a CPU emulates it (slower than float32, and oneDNN refuses its recurrent kernels).

On a CPU with the units, the LSTM runs oneDNN's bf16 kernel under autocast (master weights
stay float32); the GRU's fused pass and the tanh RNN keep their recurrence in float32
(seqmnist.models.nets.recurrence_in_float32). ``trainer.precision=32-true`` keeps
everything in float32.
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from omegaconf import DictConfig
from torch.optim import Optimizer

from seqmnist.core.errors import ConfigError
from seqmnist.core.machine import cpu_bf16_units

log = logging.getLogger("seqmnist.precision")

AUTO = "auto"
BF16 = ("bf16-mixed", "bf16-true", "bf16")


def gpu_bf16_units() -> bool:
    """Whether the GPU computes in bf16 natively (Ampere and later), not by emulation."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def on_gpu(accelerator: object) -> bool:
    accelerator = str(accelerator)
    return accelerator in ("gpu", "cuda") or (accelerator == AUTO and torch.cuda.is_available())


def choose(precision: object, accelerator: object) -> str:
    """``trainer.precision`` as Lightning takes it: ``auto`` resolved for this machine, an
    explicit bf16 checked against it, anything else as given."""
    gpu = on_gpu(accelerator)
    units = ("a bf16 GPU" if gpu_bf16_units() else None) if gpu else cpu_bf16_units()
    if str(precision) == AUTO:
        return "bf16-mixed" if units else "32-true"
    if str(precision) in BF16 and not units:
        where = (
            "this GPU has no native bf16 (it needs Ampere or later)"
            if gpu
            else "this CPU has no bf16 units (AVX512-BF16 or AMX), so bf16 would run emulated, "
            "slower than float32"
        )
        raise ConfigError(
            f"trainer.precision={precision}: {where}. Fix: trainer.precision=auto (float32 "
            "here) or trainer.precision=32-true."
        )
    return str(precision)


def resolve(cfg: DictConfig) -> str:
    """Write the chosen precision into ``cfg.trainer.precision`` (saved with the run)."""
    before = cfg.trainer.get("precision", AUTO)
    chosen = choose(before, cfg.trainer.get("accelerator", AUTO))
    cfg.trainer.precision = chosen
    if str(before) == AUTO:
        gpu = on_gpu(cfg.trainer.get("accelerator", AUTO))
        units = "GPU" if gpu else cpu_bf16_units()
        why = f"this machine has bf16 units ({units})" if chosen != "32-true" else "no bf16 units"
        log.info("precision: %s (trainer.precision=auto: %s)", chosen, why)
    return chosen


class BF16MixedPrecision(MixedPrecision):
    """Lightning's ``bf16-mixed`` with gradient clipping allowed for fused optimizers.

    Lightning refuses to clip for an optimizer that unscales gradients itself (fused Adam):
    under fp16 its GradScaler would leave scaled gradients to clip. bf16 has no scaler, so
    the gradients are the true ones and clipping them before the step is exact."""

    def __init__(self, device: str) -> None:
        super().__init__("bf16-mixed", device)

    def clip_gradients(
        self,
        optimizer: Optimizer,
        clip_val: float = 0.0,
        gradient_clip_algorithm: GradClipAlgorithmType = GradClipAlgorithmType.NORM,
    ) -> None:
        Precision.clip_gradients(self, optimizer, clip_val, gradient_clip_algorithm)


def plugin(cfg: DictConfig) -> Precision | None:
    """The precision plugin ``build_trainer`` passes in place of ``cfg.trainer.precision``:
    :class:`BF16MixedPrecision` for ``bf16-mixed``, else None (Lightning's own)."""
    if str(cfg.trainer.get("precision")) != "bf16-mixed":
        return None
    return BF16MixedPrecision("cuda" if on_gpu(cfg.trainer.get("accelerator", AUTO)) else "cpu")
