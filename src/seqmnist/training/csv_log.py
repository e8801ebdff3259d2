"""``logger=csv``: Lightning's ``CSVLogger``, whose ``metrics.csv`` survives a resume.

Lightning's writer deletes an existing ``metrics.csv`` when a new one starts in the same
folder, so a run resumed in its own directory (``resume=RUN_DIR``, a requeued SLURM job)
would keep only the epochs after the stop. This writer keeps the rows already there and
appends; a row the resumed run logs again (a run killed without a checkpoint at the stop
replays the steps since its last one) replaces the earlier row of that step and figure, so
each step and epoch is in the file once.
"""

from __future__ import annotations

import csv
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _KeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Lightning's version deletes metrics.csv here. Read what it holds instead.
        self._earlier: set[tuple[str, str]] = set()  # (step, figure) of the rows before
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            self.metrics_keys = sorted(reader.fieldnames or [])
            for row in reader:
                self._earlier.update(
                    (row.get("step", ""), k) for k, v in row.items() if v not in ("", None)
                )

    def save(self) -> None:
        if self.metrics and self._earlier:
            again = {
                (str(row["step"]), k) for row in self.metrics for k in row if k != "step"
            } & self._earlier
            if again:
                self._drop_earlier(again)
        super().save()

    def _drop_earlier(self, again: set[tuple[str, str]]) -> None:
        """Remove the earlier rows that hold a (step, figure) logged again."""
        steps = {step for step, _ in again}
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [
            row
            for row in rows
            if row.get("step") not in steps
            or not any((row["step"], k) in again for k, v in row.items() if v not in ("", None))
        ]
        with self._fs.open(self.metrics_file_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(kept)
        self._earlier -= again


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to the ``metrics.csv`` of the run it continues."""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment
