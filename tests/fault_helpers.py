"""Test-only callbacks, added to a training run with ``+callbacks.NAME._target_=...``."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class SlowSteps(L.Callback):
    """Makes each training step take at least ``seconds``, so a test can signal mid-epoch."""

    def __init__(self, seconds: float = 0.1) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(self.seconds)
