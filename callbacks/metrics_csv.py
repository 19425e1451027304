"""``logs/metrics.csv`` that keeps its history across a resume.

Lightning's CSVLogger deletes metrics.csv when it starts, so a resumed run used to hold only the epochs after the
resume. Here a resume keeps the rows logged before its checkpoint (those logged after it by the interrupted run are
dropped: the resumed run logs them again, as ``labels.csv`` drops the dissections after the checkpoint), and the
resumed run's rows follow. A row with new columns rewrites the file under the grown header through a staged file.
Rows reach the disk at the latest when ``last.ckpt`` moves on (callbacks/run_checkpoint.py flushes the loggers
first), so every row before the checkpoint a resume reads is in the file.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from lwtakit.io import atomic_write


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with atomic_write(path, newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")  # only empty cells of dropped columns
        writer.writeheader()
        writer.writerows(rows)


def _append(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """Append ``rows``; a failed write (a full disk) cuts the file back to its last complete row."""
    size = path.stat().st_size
    try:
        with open(path, "a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=columns).writerows(rows)
    except OSError:
        os.truncate(path, size)  # frees space, so it works on a full disk too
        raise


def _before(row: dict[str, str], step: int) -> bool:
    """Whether ``row`` was logged before a checkpoint at global step ``step``.

    Lightning logs an epoch's validation and epoch-end metrics at the step of its last batch (global step - 1),
    and everything that follows the checkpoint (the next epoch's learning rate, the final test) at the global step
    or later."""
    return not row.get("step") or int(float(row["step"])) < step


class MetricsWriter(ExperimentWriter):
    """Lightning's metrics.csv writer, started from the rows before ``resume_step`` (None: a new, empty file)."""

    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self.resume_step = resume_step  # read by _check_log_dir_exists, which the parent's __init__ calls
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        """Start metrics.csv: empty for a new run; for a resume, the rows logged before its checkpoint, under
        the columns those rows use."""
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        kept = [] if self.resume_step is None else [r for r in _read(path) if _before(r, self.resume_step)]
        if not kept:
            path.unlink()
            return
        self.metrics_keys = sorted({k for row in kept for k, v in row.items() if v != ""})
        _write(path, self.metrics_keys, kept)

    def save(self) -> None:
        """Append the rows logged since the last save; rows with new columns rewrite the file under the grown
        header (staged and renamed, so a crash leaves the previous complete file)."""
        if not self.metrics:
            return
        path = Path(self.metrics_file_path)
        new_keys = self._record_new_keys()
        if new_keys or not path.is_file():
            old = _read(path) if path.is_file() else []
            _write(path, self.metrics_keys, old + self.metrics)
        else:
            _append(path, self.metrics_keys, self.metrics)
        self.metrics = []


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger(save_dir, name="logs", version="")`` whose metrics.csv continues the rows before the checkpoint
    at global step ``resume_step`` (None: a new run)."""

    def __init__(self, save_dir: str | Path, resume_step: int | None = None) -> None:
        super().__init__(save_dir=str(save_dir), name="logs", version="")
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> MetricsWriter:
        if self._experiment is None:
            Path(self.root_dir).mkdir(parents=True, exist_ok=True)
            self._experiment = MetricsWriter(self.log_dir, self.resume_step)
        return self._experiment
