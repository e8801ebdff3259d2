"""The progress bar: Lightning's rich bar without the logger's version number (``v_num``),
which for our named TensorBoard runs shows four meaningless characters."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """``RichProgressBar`` showing only the metrics the module logs to the bar."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        # Lightning's documented way to change the bar's items: override get_metrics.
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items
