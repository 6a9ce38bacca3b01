"""focalnet-train: train one FocalNet, or sweep many (`-m`), from the Hydra configs in conf/.

Every run folder holds the composed config (.hydra/), checkpoints/ (best and last), the W&B run (wandb/) and
summary.json. A failed run records status "failed" and its one-line error there and prints `error: ...`; a sweep
goes on to its next job (unless fail_fast=true) and the command exits 1 at the end if any job failed.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from focalnet import schema
from focalnet.cli import FAILED, config_dir, run_app
from focalnet.run.build import (
    SummaryWarnings,
    build_model,
    build_trainer,
    choices,
    class_summary,
    fill_split_file,
    resolve_trainer_precision,
)
from focalnet.run.job import (
    apply_resume,
    job_lock,
    launches_processes,
    rerun_this_job_in_children,
    run_job,
    watch_startup,
)

log = logging.getLogger(__name__)


def train(cfg: DictConfig, summary: dict) -> None:
    started = time.perf_counter()
    import lightning as L
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate, to_absolute_path

    import focalnet
    from focalnet.run.callbacks import FirstStepTimer
    from focalnet.run.module import check_checkpoint

    schema.validate(cfg)  # every key's type and range, before anything is built
    # What focalnet's modules warn about while the run is built and trained (a split that leaves less than half of
    # the data to train on, ...) goes into the summary as well as the log.
    logging.getLogger("focalnet").addHandler(SummaryWarnings(summary))
    for warning in schema.warnings(cfg):
        log.warning(warning)
    summary["seed"] = L.seed_everything(cfg.seed, workers=True)
    picked = HydraConfig.get().runtime.choices
    summary["model"] = cfg.model.get("name") or "focalnet_card"
    summary["data"] = picked.get("data")
    # A `???` in the overlay cannot demand it: merged over the model config's null, OmegaConf keeps the null.
    if picked.get("experiment") == "finetune" and not cfg.model.get("pretrained"):
        raise ValueError(
            "model.pretrained is not set: experiment=finetune starts from weights (a .pth, .safetensors or "
            "focalnet-train .ckpt file, or a hub id)"
        )

    # Plain containers, not DictConfigs: the data module's hyperparameters go into checkpoints, which must load
    # with torch.load(weights_only=True).
    resolve_trainer_precision(cfg, summary)  # before the config is recorded: runs and W&B show what ran
    ckpt_path = to_absolute_path(cfg.ckpt_path) if cfg.ckpt_path else None
    fill_split_file(cfg.data, Path(summary["run_dir"]), ckpt_path)
    datamodule = instantiate(cfg.data, _convert_="all")
    if cfg.data.get("num_classes") == "auto":  # counted by the data module; the model's head is ${data.num_classes}
        cfg.data.num_classes = datamodule.num_classes
    if cfg.data.get("image_size") == "auto":  # chosen by the data module; the model's is ${data.image_size}
        cfg.data.image_size = datamodule.image_size
    summary["image_size"] = cfg.data.image_size
    if "patch_size" in cfg.model:  # the card's follows the image size
        summary["patch_size"] = cfg.model.patch_size
    model = build_model(cfg.model)
    stats = focalnet.model_stats(model, cfg.data.image_size, cfg.data.in_channels)
    summary.update(stats)
    # The resolved config plus the chosen group options travels to W&B and into every checkpoint.
    resolved = {**OmegaConf.to_container(cfg, resolve=True), "choices": choices()}
    module = instantiate(cfg.module, model=model, optim=resolved["optim"], run_config=resolved, _recursive_=False)
    if ckpt_path:
        check_checkpoint(ckpt_path, module)
    trainer = build_trainer(cfg, summary, ckpt_path)
    summary["world_size"] = trainer.world_size
    trainer.callbacks.append(FirstStepTimer(summary, started))
    pruning = None
    if (cfg.get("search") or {}).get("trial") is not None:  # a trial of an Optuna search (hparams_search=...)
        from focalnet.search.sweeper import TrialPruning

        # Resolved here: the pruner's settings may point elsewhere in the config (max_resource: trainer.max_epochs).
        pruning = TrialPruning(OmegaConf.create(OmegaConf.to_container(cfg.search, resolve=True)), cfg.optimized_metric)
        trainer.callbacks.append(pruning)
        summary["trial"] = int(cfg.search.trial)
    for logger in trainer.loggers:
        logger.log_hyperparams({**resolved, **stats, "git": summary["git"], "command": summary["argv"]})
    summary["resumed_from"] = ckpt_path
    if launches_processes(trainer):
        # resume=auto already chose the checkpoint (the children would read the summary rank 0 just rewrote).
        rerun_this_job_in_children(Path(summary["run_dir"]), "resume=null", f'ckpt_path="{ckpt_path}"' if ckpt_path
                                   else "ckpt_path=null")

    watch_startup(trainer, summary, cfg.startup_timeout)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise RuntimeError("training was interrupted")
    summary["classes"] = class_summary(datamodule.classes)
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
    if ckpt_path and not any(k.startswith("val/") for k in metrics):  # resumed with nothing left to train
        metrics = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=True).get("metrics", {}) | metrics
    summary["train_images_per_s"] = metrics.get("train/images_per_s")
    summary["warmup_steps"] = module.warmup_steps  # optim.warmup_ratio may have capped it
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        epoch = torch.load(best, map_location="cpu", mmap=True, weights_only=True)["epoch"]
        callback = trainer.checkpoint_callback
        summary["best"] = {callback.monitor or "val/acc_top1": callback.best_model_score.item(), "epoch": epoch}
        tie_value = getattr(callback, "tie_values", {}).get(best, math.inf)  # focalnet.run.callbacks.ModelCheckpoint's
        if math.isfinite(tie_value):  # what chose among tied epochs (val/loss)
            summary["best"].setdefault(callback.tie_breaker, tie_value)
        summary["best_ckpt"] = best
    if pruning and pruning.pruned_at is not None:  # its search has dropped it: no test of a trial it will not pick
        summary["pruned_at_epoch"] = pruning.pruned_at
    elif cfg.test:
        metrics.update(trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)[0])
    summary["metrics"] = metrics
    if pruning:
        for logger in trainer.loggers:  # the W&B run says how its trial ended
            if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
                logger.experiment.summary.update({"trial": summary["trial"], "trial_state":
                                                  "pruned" if pruning.pruned_at is not None else "complete"})
    if trainer.is_global_zero:
        report(summary, trainer)


def report(summary: dict, trainer) -> None:
    """What a person at the terminal wants at the end: where the run is, how it did, how to upload it."""
    shown = {k: v for k, v in sorted(summary["metrics"].items()) if k.startswith(("test/", "val/"))}
    print(f"\nrun folder: {summary['run_dir']}")
    print("metrics:    " + "  ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and logger.experiment.settings.mode != "online":
            print(f"W&B run:    wandb sync {Path(logger.experiment.dir).parent}")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with job_lock(run_dir) as busy:
        if busy:  # another live process trains this job: nothing here may write into its folder
            if cfg.get("resume") == "auto":
                print(f"resume=auto: {run_dir} is being trained by another process, skipped", flush=True)
            else:
                print(f"error: {run_dir} is being trained by another process", file=sys.stderr, flush=True)
                FAILED.append(str(run_dir))
            return None
        # resume=auto: a completed job is skipped (its recorded summary still feeds the sweeper), an unfinished one
        # resumes; what it says about the checkpoint it chose goes into the job's summary too.
        warnings: list[str] = []
        done = apply_resume(cfg, run_dir, warnings)
        summary = done or run_job("focalnet-train", cfg, train, warnings)
    # What an optimising sweeper (hparams_search=optuna) maximises; None marks a failed trial.
    return (summary.get("metrics") or {}).get(cfg.get("optimized_metric"))


def main() -> None:
    """Console entry point (focalnet.cli.run_app: one-line Hydra errors, exit code 1 when any run failed)."""
    run_app(_hydra_main)


if __name__ == "__main__":
    main()
