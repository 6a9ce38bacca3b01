"""Callback factories the configs name with `_target_`, the callbacks every run's Trainer gets (`always_on`), and the
ones train.py adds itself."""

from __future__ import annotations

import logging
import math
import random
import signal
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from focalnet.models.gemm import adopt_choices, gemm_choices
from focalnet.record import RunRecord, write_record

log = logging.getLogger(__name__)


def progress_bar(refresh_rate: int = 1) -> ProgressBar:
    """Rich bars in a terminal; tqdm when the output goes to a file or pipe, where Rich's live display is lost."""
    if sys.stdout.isatty():
        return RichProgressBar(refresh_rate=refresh_rate)
    return TQDMProgressBar(refresh_rate=refresh_rate)


def always_on() -> list[Callback]:
    """What every focalnet-train and focalnet-eval Trainer gets, whatever the config: exact resume, W&B continuity and
    the logged metrics depend on them, so they are no config option."""
    return [Throughput(), RNGStateInCheckpoint(), GemmChoicesInCheckpoint(), WandbRunIdInCheckpoint(),
            WandbConfusionMatrix()]


def wandb_loggers(trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ModelCheckpoint, but a tie on the monitored metric goes to the lower `tie_breaker` (val/loss): on
    a small validation set many epochs share the best top-1, and the first of them is rarely the best model.
    Lightning keeps the first (its comparison is strict); here an equal score with a lower loss replaces it, and
    `best_model_path` is the tied checkpoint with the lowest loss. Same class name: the checkpoints' callback state
    key (the class name, monitor, mode, ...) stays Lightning's, so runs saved before resume with their best."""

    def __init__(self, *args, tie_breaker: str | None = "val/loss", **kwargs):
        super().__init__(*args, **kwargs)
        self.tie_breaker = tie_breaker
        self.tie_values: dict[str, float] = {}  # each kept checkpoint's tie_breaker value

    def _tie_value(self, metrics: dict) -> float:
        value = metrics.get(self.tie_breaker) if self.tie_breaker else None
        return math.inf if value is None else float(value)

    def _rank(self, path: str) -> tuple[float, float]:
        """Higher is better: the monitored score (by mode), then the lower tie-breaker."""
        score = float(self.best_k_models[path])
        return score if self.mode == "max" else -score, -self.tie_values.get(path, math.inf)

    def check_monitor_top_k(self, trainer, current=None) -> bool:
        if current is None:
            return False
        if super().check_monitor_top_k(trainer, current):
            return True
        kth = self.kth_best_model_path  # the checkpoint this one would replace
        tie = bool(current == self.best_k_models[kth]) and (
            self._tie_value(trainer.callback_metrics) < self.tie_values.get(kth, math.inf)
        )
        return trainer.strategy.reduce_boolean_decision(tie)  # every rank decides alike

    def _update_best_and_save(self, current, trainer, monitor_candidates) -> None:
        value = self._tie_value(monitor_candidates)
        super()._update_best_and_save(current, trainer, monitor_candidates)
        # Lightning stored `current` under the new checkpoint's path (as current_score); among ties it picks by
        # insertion order, so the best and the next to replace are picked again, by score then tie-breaker.
        new = next(path for path, score in self.best_k_models.items() if score is self.current_score)
        self.tie_values = {path: self.tie_values.get(path, math.inf) for path in self.best_k_models} | {new: value}
        if self.kth_best_model_path in self.best_k_models:
            self.kth_best_model_path = min(self.best_k_models, key=self._rank)
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        self.best_model_path = max(self.best_k_models, key=self._rank)
        self.best_model_score = self.best_k_models[self.best_model_path]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "tie_values": self.tie_values}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.tie_values = state_dict.get("tie_values", {})


class Throughput(Callback):
    """Logs `train/images_per_s`: images/s over the training batches of each epoch (validation excluded), summed over
    ranks; the summary's `train_images_per_s` is its last value. Lightning's ThroughputMonitor reports only once a
    100-batch window has filled and keeps its numbers to itself. A batch the module skipped (its training_step
    returned None: a non-finite loss under module.on_nonfinite=skip) is not counted."""

    def __init__(self):
        self.images, self.start, self.train_time = 0, 0.0, 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()  # a run resumed mid-epoch gets no on_train_epoch_start

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.images, self.start = 0, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.train_time = time.perf_counter() - self.start
        if outputs is not None and outputs.get("loss") is not None:
            self.images += len(batch[0])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.train_time > 0:
            pl_module.log("train/images_per_s", self.images / self.train_time, sync_dist=True, reduce_fx="sum")


class RNGStateInCheckpoint(Callback):
    """Checkpoints keep the global RNG states (`rng_states`: torch, python, and cuda where there is one), which
    Lightning leaves out; with them, a run resumed from an epoch-end checkpoint draws the same shuffles,
    augmentations and drop-paths as the run that never stopped. The states are applied at on_train_start, after the
    sanity check, whose dataloader iterator draws from the global RNG."""

    def __init__(self):
        self.resumed: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.resumed = checkpoint.get("rng_states")

    def on_train_start(self, trainer, pl_module) -> None:
        states, self.resumed = self.resumed, None
        if states:
            torch.set_rng_state(states["torch"])
            version, state, gauss = states["python"]
            random.setstate((version, tuple(state), gauss))
            if "cuda" in states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])


class GemmChoicesInCheckpoint(Callback):
    """Checkpoints keep the dense layers' kernel choices (`gemm_choices`, focalnet.models.gemm): a run resumed on
    another node, or after the machine's cache changed, computes with the kernels of the run that never stopped."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["gemm_choices"] = gemm_choices()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        adopt_choices(checkpoint.get("gemm_choices") or {})


class WandbRunIdInCheckpoint(Callback):
    """Checkpoints name the W&B run that wrote them (`wandb_run_id`, None without one): a run resumed from one logs
    into that run (build.build_trainer)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        ids = [logger.version for logger in wandb_loggers(trainer)]
        checkpoint["wandb_run_id"] = ids[0] if ids else None


class WandbConfusionMatrix(Callback):
    """The test images' confusion matrix with class names, as W&B's chart `test/confusion_matrix`; beyond 100 classes
    it is unreadable. At on_test_end: the module gathers every rank's predictions in on_test_epoch_end, which
    Lightning calls after the callbacks' on_test_epoch_end."""

    def on_test_end(self, trainer, pl_module) -> None:
        loggers = wandb_loggers(trainer)
        if not loggers or pl_module.num_classes > 100 or pl_module.predictions is None or not trainer.is_global_zero:
            return
        import wandb

        labels, predicted = pl_module.predictions.tolist()
        names = pl_module.class_names or [str(i) for i in range(pl_module.num_classes)]
        chart = wandb.plot.confusion_matrix(y_true=labels, preds=predicted, class_names=names)
        for logger in loggers:
            logger.experiment.log({"test/confusion_matrix": chart})


class FirstStepTimer(Callback):
    """Records `time_to_first_step_s` in the run's record and writes it: seconds from `start` (the job's start) to
    its first training batch, i.e. what every job of a sweep pays before it learns (data, model, DDP start-up, sanity
    check); and the CPU threads that batch runs on (Lightning's DDP launcher divides the cores among the ranks it
    starts after the Trainer was made and the record first said)."""

    def __init__(self, record: RunRecord, start: float):
        self.record, self.start = record, start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.record.time_to_first_step_s is None:
            self.record.first_step(time.perf_counter() - self.start, torch.get_num_threads())
            # On disk now: a search's sweeper signals a trial only once it trains (Lightning's SIGTERM handler is set).
            if trainer.is_global_zero and self.record.run_dir:
                write_record(Path(self.record.run_dir), self.record)


class CheckpointOnInterrupt(Callback):
    """Saves the run's state to `path` (checkpoints/last.ckpt) when SIGTERM (preemption, `kill`, `scancel`) or
    SIGUSR1 (SLURM's early warning) stops training: Lightning's SignalConnector lets the current batch finish and
    raises SIGTERMException, so the checkpoint holds every batch trained so far, and the same command with
    `ckpt_path=<path>` (or resume=auto) continues exactly where the run stopped. The exception carries what
    happened (`interrupt`: signal, epoch, step, checkpoint) to the run's record; under SLURM, job.py then requeues
    the job after a SIGUSR1.

    Not Lightning's OnExceptionCheckpoint or ModelCheckpoint(save_on_exception=True): both save on any error too (a
    non-finite loss, a crash) and would overwrite the last good checkpoint with a broken state. Ctrl-C
    (KeyboardInterrupt) is not saved either: it can land half-way through an optimizer step. Nor Lightning's SLURM
    auto-requeue: its SIGUSR1 handler saves hpc_ckpt_<n>.ckpt the moment the signal lands, half-way through a step,
    and the requeued run drifts from the uninterrupted one.
    """

    def __init__(self, path: str):
        self.path = path
        self.signal = "SIGTERM"

    def on_fit_start(self, trainer, pl_module) -> None:
        # Installed before Lightning registers its handlers, so Lightning keeps it and adds no auto-requeue handler
        # of its own. At signal time it runs whatever SIGTERM runs then: Lightning's "stop after this batch".
        def on_sigusr1(signum, frame) -> None:
            self.signal = "SIGUSR1"
            handler = signal.getsignal(signal.SIGTERM)
            if callable(handler):
                handler(signum, frame)

        self.signal = "SIGTERM"
        signal.signal(signal.SIGUSR1, on_sigusr1)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # In the test phase the module holds the best checkpoint's weights, and training's last.ckpt is complete.
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking or trainer.testing:
            return
        if trainer.validating:
            # Stopped between two validation batches, Lightning would resume by skipping the rest of this validation
            # (the epoch's metrics, best checkpoint and early stopping never seeing it). Recorded as stopped inside a
            # batch, it runs the validation again from its first batch (the metrics of the earlier ones are lost).
            progress = trainer.fit_loop.epoch_loop.val_loop.batch_progress
            progress.current.reset()
            progress.total.ready = progress.total.started = progress.total.processed + 1
        trainer.save_checkpoint(self.path)
        exception.interrupt = {"signal": self.signal, "epoch": trainer.current_epoch, "step": trainer.global_step,
                               "checkpoint": self.path}
        if rank_zero_only.rank == 0:
            log.warning(
                f"{self.signal} at epoch {trainer.current_epoch}, step {trainer.global_step}: saved {self.path}; "
                "the same command with resume=auto (or ckpt_path=<that file>) continues from it"
            )


class ModulatorMaps(Callback):
    """Every `every_n_epochs` epochs, at validation end: focalnet.run.maps's modulator and gate figures of the first
    `num_images` validation images (the first batch as the module sees it, kept from the first validation on), logged
    to W&B and TensorBoard as `viz/modulator` and `viz/gates` and saved as `dirpath/epoch<NNN>_{modulator,gates}.png`.

    Rank 0 only; one forward of `num_images` images without gradients, in eval mode, and two figures: 1.5-2 s on a
    2-core CPU (4 digits). `blocks` chooses the modulator rows as focalnet-viz --blocks does (`last`, `all`,
    `"0.1,3.0"`).
    """

    def __init__(self, dirpath: str, every_n_epochs: int = 5, num_images: int = 4, blocks: str = "last"):
        from focalnet.run.maps import parse_blocks

        for key, value in (("every_n_epochs", every_n_epochs), ("num_images", num_images)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"callbacks.modulator_maps.{key}={value!r} must be a positive integer")
        self.dirpath = Path(dirpath)
        self.every_n_epochs, self.num_images = every_n_epochs, num_images
        self.blocks = parse_blocks(str(blocks))
        self.batch = None
        self._drawn_epoch = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        from focalnet.run.maps import depths_of, select_blocks

        select_blocks(depths_of(pl_module.model), self.blocks)  # a block the model lacks fails now, not epochs later

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.batch is None and batch_idx == 0 and dataloader_idx == 0 and trainer.is_global_zero:
            images, labels = batch
            self.batch = images[: self.num_images].detach().clone(), labels[: self.num_images].detach().cpu()

    def on_validation_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if trainer.sanity_checking or not trainer.is_global_zero or self.batch is None or epoch == self._drawn_epoch:
            return
        if (epoch + 1) % self.every_n_epochs:
            return
        import matplotlib.pyplot as plt

        from focalnet.run.maps import map_figures

        self._drawn_epoch = epoch
        data = trainer.datamodule
        images, labels = self.batch
        figures = map_figures(pl_module.model, images, data.mean, data.std, self.blocks, labels=labels,
                              classes=getattr(data, "classes", None))
        self.dirpath.mkdir(parents=True, exist_ok=True)
        for name, fig in figures.items():
            path = self.dirpath / f"epoch{epoch:03d}_{name}.png"
            fig.savefig(path, dpi=100)
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=f"viz/{name}", images=[str(path)], step=trainer.global_step)
                elif isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(f"viz/{name}", fig, global_step=trainer.global_step, close=False)
            plt.close(fig)  # pyplot keeps every open figure alive: one pair per drawing would add up over a run
