"""One line saying what machine a run's timings come from (metrics.json, results tables)."""

from __future__ import annotations

import os
import platform


def describe() -> str:
    """e.g. ``Linux x86_64, 2 CPUs, 2 torch threads, no GPU, torch 2.14.1``."""
    import torch  # here, so the results table can be built without importing torch up front

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"
    )
