"""Assembling a run from its config: the model, the Trainer with its loggers and callbacks, the data split's file,
and what the run's record says about them."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from omegaconf import DictConfig, open_dict

from focalnet.cli import one_line
from focalnet.record import RunRecord


def instantiate_all(group: DictConfig | None) -> list:
    """The `_target_` entries of a group like callbacks/ or logger/ (entries set to null are skipped)."""
    from hydra.utils import instantiate

    return [instantiate(c, _convert_="all") for c in (group or {}).values() if c is not None and "_target_" in c]


def wandb_config(cfg: DictConfig) -> DictConfig | None:
    """The W&B logger's config, or None when W&B is not among the loggers. A study that runs with logger=csv leaves
    study_common's logger.wandb.group behind, a node without _target_ that instantiate_all skips: so is it here."""
    node = (cfg.get("logger") or {}).get("wandb")
    return node if node is not None and "_target_" in node else None


def resolve_trainer_precision(cfg: DictConfig) -> str:
    """trainer.precision=auto becomes what this machine runs best (focalnet.precision); returns which."""
    from focalnet.precision import resolve_precision

    cfg.trainer.precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    return cfg.trainer.precision


def build_trainer(cfg: DictConfig, record: RunRecord, ckpt_path: str | None = None):
    """CPU threads (focalnet.threads), loggers (W&B name and group filled in from the job), callbacks (the config's
    and callbacks.always_on) and the Trainer, and what the record says of them. A run resumed from a checkpoint
    (resume=auto after SIGTERM or preemption, or ckpt_path=) logs into the W&B run that wrote it: same id,
    resume="allow" (online W&B appends to it; offline, a second folder offline-run-<time>-<same id> that `wandb sync`
    uploads into that run)."""
    from hydra.utils import instantiate

    record.use_precision(resolve_trainer_precision(cfg))
    wandb_cfg = wandb_config(cfg)
    if wandb_cfg is not None:
        resumed_id = None
        if ckpt_path and not wandb_cfg.get("id"):
            import torch

            resumed_id = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=True).get("wandb_run_id")
            if resumed_id:
                with open_dict(wandb_cfg):
                    wandb_cfg.id, wandb_cfg.resume = resumed_id, "allow"
        wandb_cfg.name = wandb_cfg.name or record.override_string or None
        if wandb_cfg.group is None and record.sweep_dir:
            wandb_cfg.group = Path(record.sweep_dir).name
        # focalnet-report logs a sweep's table and plots to the same project and group.
        mode = "offline" if wandb_cfg.offline else os.environ.get("WANDB_MODE", "online")
        record.use_wandb(wandb_cfg.project, wandb_cfg.group, mode, resumed_id=resumed_id or None)
    from lightning.pytorch.callbacks import LearningRateMonitor

    from focalnet.run.callbacks import always_on
    from focalnet.threads import threads_used

    loggers = instantiate_all(cfg.get("logger"))
    callbacks = instantiate_all(cfg.get("callbacks"))
    if not loggers:  # logger=none: the learning rate has nowhere to go, and LearningRateMonitor would refuse to run
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks + always_on(), logger=loggers or False)
    record.use_threads(threads_used(cfg.trainer.get("threads")))
    return trainer


class SummaryWarnings(logging.Handler):
    """Collects the warnings of focalnet's loggers into the run's record (summary.json's warnings), for this job
    only: the handler of a sweep's earlier job in the same process gives way to the next job's."""

    def __init__(self, record: RunRecord) -> None:
        super().__init__(logging.WARNING)
        for old in [h for h in logging.getLogger("focalnet").handlers if isinstance(h, SummaryWarnings)]:
            logging.getLogger("focalnet").removeHandler(old)
        self.record = record

    def emit(self, entry: logging.LogRecord) -> None:
        self.record.warn(entry.getMessage())


def build_model(model_cfg: DictConfig):
    """The model; its own checks (kernel parity, image size against patch size) name plain arguments, which a run
    reports as the config keys they came from: `image_size=30` becomes `model.image_size=30`."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(model_cfg, _convert_="all")
    except InstantiationException as error:
        if not isinstance(error.__cause__, ValueError):
            raise
        keys = "|".join(k for k in model_cfg if not k.startswith("_"))
        raise ValueError(re.sub(rf"(?<![\w.])({keys})=", r"model.\1=", one_line(error.__cause__))) from error


def fill_split_file(data: DictConfig, run_dir: Path, ckpt_path: str | None) -> None:
    """data.split_file=null, where the data module draws its own split, becomes <run_dir>/split.json: a resumed run
    and focalnet-eval of the run's checkpoints read the split back instead of drawing it again from a folder that
    may have grown. Resumed from another run's checkpoint (<run>/checkpoints/<file>.ckpt), a run starts from a copy
    of that run's split.json."""
    if "split_file" not in data or data.split_file is not None:
        return
    split_file = run_dir / "split.json"
    recorded = Path(ckpt_path).parent.parent / "split.json" if ckpt_path else None
    if recorded is not None and recorded.is_file() and not split_file.exists():
        shutil.copyfile(recorded, split_file)
    data.split_file = str(split_file)


def class_summary(names: list[str]) -> list[str] | int:
    """The class names for summary.json; their number alone beyond 50, where a list stops being readable."""
    return list(names) if len(names) <= 50 else len(names)


def choices() -> dict[str, str]:
    """The config group options this run picked, e.g. {"data": "digits", "model": "card", ...}."""
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices
    return {k: v for k, v in choices.items() if not k.startswith("hydra") and v is not None}
