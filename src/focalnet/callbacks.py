"""Callback factories the configs name with `_target_`, and the callbacks train.py adds itself."""

from __future__ import annotations

import logging
import signal
import sys
import time

from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


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


class CheckpointOnInterrupt(Callback):
    """Saves the run's state to `path` (checkpoints/last.ckpt) when SIGTERM (preemption, `kill`, `scancel`) or
    SIGUSR1 (SLURM's early warning) stops training: Lightning's SignalConnector lets the current batch finish and
    raises SIGTERMException, so the checkpoint holds every batch trained so far, and the same command with
    `ckpt_path=<path>` (or resume=auto) continues exactly where the run stopped.

    Not Lightning's OnExceptionCheckpoint or ModelCheckpoint(save_on_exception=True): both save on any error too (a
    non-finite loss, a crash) and would overwrite the last good checkpoint with a broken state. Ctrl-C
    (KeyboardInterrupt) is not saved either: it can land half-way through an optimizer step.
    """

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        # SIGUSR1 does what SIGTERM does, unless Lightning's SLURM auto-requeue handles it (hpc_ckpt + requeue).
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGUSR1, signal.getsignal(signal.SIGTERM))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        if trainer.validating:
            # Lightning would resume validation at the next batch with the metrics of the earlier ones lost: start it
            # over instead (the validation loader is not resumable, and need not be).
            trainer.fit_loop.epoch_loop.val_loop.batch_progress.current.reset()
        trainer.save_checkpoint(self.path)
        if rank_zero_only.rank == 0:
            log.warning(
                f"interrupted at epoch {trainer.current_epoch}, step {trainer.global_step}: saved {self.path}; "
                "the same command with resume=auto (or ckpt_path=<that file>) continues from it"
            )
