"""Training on every step: the shared head's cross-entropy after each step read, weighted
over the steps (``model.anytime_loss``), so the net learns to answer before the last step.

A net trained on its last step alone knows nothing until late (the anytime curve of
docs/using-a-model.md); one trained on every step answers as the rows arrive, and early exit
(:mod:`seqmnist.inference.early_exit`) can stop reading once it is sure.

The weightings (each sums to 1 over the T steps; ``w_t`` is step t's weight, t = 1..T):

* ``none``: ``w_T = 1``, the others 0: the last step only (plain sequence classification).
* ``uniform``: ``w_t = 1/T``: every step's answer counts the same.
* ``linear``: ``w_t = 2t / (T (T + 1))``: later steps, having read more, weigh more; the
  last step weighs T times the first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqmnist.core.checks import Rule, one_of
from seqmnist.core.errors import ConfigError

WEIGHTINGS = ("none", "uniform", "linear")
ANYTIME_LOSS: Rule = one_of(WEIGHTINGS, "choose with model.anytime_loss=NAME", ordered=True)


def check_anytime_loss(name: str, bidirectional: bool) -> None:
    """An unknown weighting, or every-step training of a bidirectional net: ConfigError."""
    ANYTIME_LOSS.check("model.anytime_loss", name)
    if name != "none" and bidirectional:
        raise ConfigError(
            f"model.anytime_loss={name} trains the answer after every step, but a "
            "bidirectional net's backward direction has read the whole sequence at every "
            "step, so it has no early answer to train. Fix: bidirectional=false, or "
            "model.anytime_loss=none."
        )


def step_weights(name: str, steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The weight of each step's loss, ``(steps,)`` float32 on ``device``, summing to 1
    (module docstring). Made where the loss is: no host-to-GPU copy in a training step."""
    ANYTIME_LOSS.check("model.anytime_loss", name)
    if name == "uniform":
        return torch.full((steps,), 1.0 / steps, device=device)
    if name == "linear":
        t = torch.arange(1, steps + 1, dtype=torch.float32, device=device)
        return t / t.sum()
    weights = torch.zeros(steps, device=device)
    weights[-1] = 1.0
    return weights


def anytime_cross_entropy(
    step_logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``sum_t w_t * CE(step t's logits, y)``, each step's CE averaged over the batch.

    Args:
        step_logits: ``(B, T, C)``, the head's logits after each step.
        targets: ``(B,)`` class indices.
        weights: ``(T,)`` from :func:`step_weights`.
    """
    b, t, c = step_logits.shape
    per_step = F.cross_entropy(
        step_logits.reshape(b * t, c),
        targets.repeat_interleave(t),
        reduction="none",
        label_smoothing=label_smoothing,
    ).view(b, t)
    return (per_step.mean(0) * weights.to(per_step)).sum()


def report_steps(steps: int) -> list[int]:
    """The 1-based steps whose accuracy is logged as ``val/acc_step{k}``: a quarter, half
    and three quarters of the sequence (7, 14, 21 of 28 rows); the last step is ``val/acc``."""
    return sorted({max(1, round(steps * q / 4)) for q in (1, 2, 3)} - {steps})
