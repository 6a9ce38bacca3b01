"""Trainer plugins and logger wrappers the configs name with `_target_` (conf/trainer/default.yaml, conf/logger/)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_warn

from focalnet.checkpoint import read_checkpoint
from focalnet.cli import one_line
from focalnet.files import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, flushes it to disk, then renames it into place: a kill or
    a full disk at any moment leaves the previous file whole and loadable (files.atomic_file).

    Lightning's own save stages the file in the system temp folder and `shutil.move`s it, a copy that a kill can cut
    short when that folder is on another filesystem than the run (a cluster's local /tmp and shared storage).
    Remote paths (s3://, ...) still go through Lightning's fsspec writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_file(Path(path), "wb") as file:
            torch.save(checkpoint, file)


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger, except that a run W&B cannot start online (no network, an invalid API key, the server
    down) is logged offline into the same folder, with one warning, instead of failing the training: nothing is
    lost, and `wandb sync <folder>` uploads it later. A W&B folder it cannot write to, W&B replaces with the system
    temp folder itself (the run's report prints where).
    """

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None and not self._offline:
            try:
                return LightningWandbLogger.experiment.fget(self)
            except Exception as error:  # wandb.errors.AuthenticationError, CommError (after settings.init_timeout), ...
                rank_zero_warn(f"W&B could not start online ({one_line(error)}); logging offline instead")
                self._offline = True
                # Offline needs no key, and W&B rejects a malformed one even then; teardown() drops the settings
                # the failed attempt cached.
                import wandb  # here, not at the top: trainer/ loads this file for AtomicCheckpointIO alone

                os.environ.pop("WANDB_API_KEY", None)
                wandb.teardown()
        return LightningWandbLogger.experiment.fget(self)


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger, except that a run resumed from a checkpoint (`ckpt_path`: the user's or resume=auto's)
    keeps the rows of metrics.csv logged before the checkpoint's step, where Lightning's deletes the file: it holds
    the whole run. The rows from that step on are dropped: the resumed run logs them again, and each row is there
    once."""

    def __init__(self, *args, ckpt_path: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ckpt_path = ckpt_path

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            # Lightning logs with the count of optimizer steps: the resumed run's first row has the checkpoint's.
            step = read_checkpoint(self.ckpt_path).get("global_step", 0) if self.ckpt_path else None
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumedExperimentWriter(self.log_dir, step)
        return self._experiment


class _ResumedExperimentWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resumed_step: int | None):
        self.resumed_step = resumed_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # where Lightning deletes metrics.csv (and warns it will)
        path = Path(self.metrics_file_path)
        if self.resumed_step is None or not path.is_file():
            return super()._check_log_dir_exists()
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            rows = [row for row in reader if int(row["step"]) < self.resumed_step]
        self.metrics_keys = list(reader.fieldnames or [])  # save() appends under this header, or rewrites it
        with atomic_file(path) as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)
