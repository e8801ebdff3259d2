"""Optimizers PyTorch does not ship in the form an experiment needs.

``TF1RMSprop`` is TensorFlow 1's ``tf.train.RMSPropOptimizer``, for reproducing the TF1
tutorials faithfully. It differs from ``torch.optim.RMSprop`` in two ways that matter early
in training: the mean square starts at 1 (not 0), so the first steps are about ``lr * grad``
rather than ``lr * sign(grad) * 3``, and epsilon sits inside the square root.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class TF1RMSprop(torch.optim.Optimizer):
    """``ms = decay * ms + (1 - decay) * g^2; mom = momentum * mom + lr * g / sqrt(ms + eps);
    w -= mom``, with ``ms`` initialised to ones and ``mom`` to zeros (TF1's slots)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        decay: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-10,
    ) -> None:
        if lr <= 0 or not 0 <= decay < 1 or momentum < 0 or epsilon < 0:
            raise ValueError(
                f"TF1RMSprop needs lr > 0, 0 <= decay < 1, momentum >= 0, epsilon >= 0; got "
                f"lr={lr}, decay={decay}, momentum={momentum}, epsilon={epsilon}"
            )
        super().__init__(
            params, {"lr": lr, "decay": decay, "momentum": momentum, "epsilon": epsilon}
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["ms"] = torch.ones_like(p)
                    state["mom"] = torch.zeros_like(p)
                ms, mom, g = state["ms"], state["mom"], p.grad
                ms.mul_(group["decay"]).addcmul_(g, g, value=1 - group["decay"])
                step = g / (ms + group["epsilon"]).sqrt()
                mom.mul_(group["momentum"]).add_(step, alpha=group["lr"])
                p.sub_(mom)
        return loss
