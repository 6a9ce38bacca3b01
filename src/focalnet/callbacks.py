"""Callback factories the configs name with `_target_`, and the callbacks train.py adds itself."""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar, TQDMProgressBar


def progress_bar(refresh_rate: int = 1) -> ProgressBar:
    """Rich bars in a terminal; tqdm when the output goes to a file or pipe, where Rich's live display is lost."""
    if sys.stdout.isatty():
        return RichProgressBar(refresh_rate=refresh_rate)
    return TQDMProgressBar(refresh_rate=refresh_rate)


class FirstStepTimer(Callback):
    """Puts `time_to_first_step_s` into the run's summary: seconds from `start` (the job's start) to its first
    training batch, i.e. what every job of a sweep pays before it learns (data, model, DDP start-up, sanity check)."""

    def __init__(self, summary: dict, start: float):
        self.summary, self.start = summary, start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.summary.setdefault("time_to_first_step_s", round(time.perf_counter() - self.start, 3))
