"""The progress bar: Lightning's rich bar without the logger's version number (``v_num``),
which for our named TensorBoard runs shows four meaningless characters."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """``RichProgressBar`` showing the module's step values and the metrics it logs to the bar.

    The step values (``pl_module.progress_values``) are Python floats the module read on
    its logging steps: values logged with ``prog_bar=True`` on every step would be read back
    from the device at every refresh, a sync per batch on a GPU.
    """

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        # Lightning's documented way to change the bar's items: override get_metrics.
        items = {
            **getattr(pl_module, "progress_values", {}),
            **super().get_metrics(trainer, pl_module),
        }
        items.pop("v_num", None)
        return items
