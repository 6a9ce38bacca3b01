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
from focalnet.cli import config_dir, run_app
from focalnet.record import RunRecord
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


def train(cfg: DictConfig, record: RunRecord) -> None:
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
    # the data to train on, ...) goes into the record as well as the log.
    logging.getLogger("focalnet").addHandler(SummaryWarnings(record))
    for warning in schema.warnings(cfg):
        log.warning(warning)
    seed = L.seed_everything(cfg.seed, workers=True)
    picked = HydraConfig.get().runtime.choices
    record.describe(model=cfg.model.get("name") or "focalnet_card", data=picked.get("data"), seed=seed)
    # Two config groups renamed, their old names kept for one release (conf/experiment/, conf/ablation/).
    for old, new in (("experiment", "recipe"), ("ablation", "benchmark")):
        if picked.get(old) is not None:
            log.warning(f"{old}={picked[old]} is deprecated and goes in the next release: use {new}={picked[old]} "
                        f"(conf/{new}/)")
    # A `???` in the overlay cannot demand it: merged over the model config's null, OmegaConf keeps the null.
    if picked.get("recipe") == "finetune" and not cfg.model.get("pretrained"):  # experiment=finetune sets it too
        named = "experiment" if picked.get("experiment") else "recipe"
        raise ValueError(
            f"model.pretrained is not set: {named}=finetune starts from weights (a .pth, .safetensors or "
            "focalnet-train .ckpt file, or a hub id)"
        )

    # Plain containers, not DictConfigs: the data module's hyperparameters go into checkpoints, which must load
    # with torch.load(weights_only=True).
    record.use_precision(resolve_trainer_precision(cfg))  # before the config is recorded: runs and W&B show what ran
    ckpt_path = to_absolute_path(cfg.ckpt_path) if cfg.ckpt_path else None
    fill_split_file(cfg.data, Path(record.run_dir), ckpt_path)
    datamodule = instantiate(cfg.data, _convert_="all")
    if cfg.data.get("num_classes") == "auto":  # counted by the data module; the model's head is ${data.num_classes}
        cfg.data.num_classes = datamodule.num_classes
    if cfg.data.get("image_size") == "auto":  # chosen by the data module; the model's is ${data.image_size}
        cfg.data.image_size = datamodule.image_size
    record.images(cfg.data.image_size, cfg.model.get("patch_size"))  # the card's patch size follows the image size
    model = build_model(cfg.model)
    stats = focalnet.model_stats(model, cfg.data.image_size, cfg.data.in_channels)
    record.model_size(**stats)
    # The resolved config plus the chosen group options travels to W&B and into every checkpoint.
    resolved = {**OmegaConf.to_container(cfg, resolve=True), "choices": choices()}
    module = instantiate(cfg.module, model=model, optim=resolved["optim"], run_config=resolved, _recursive_=False)
    if ckpt_path:
        check_checkpoint(ckpt_path, module)
    trainer = build_trainer(cfg, record, ckpt_path)
    trainer.callbacks.append(FirstStepTimer(record, started))
    pruning = None
    if (cfg.get("search") or {}).get("trial") is not None:  # a trial of an Optuna search (hparams_search=...)
        from focalnet.search.sweeper import TrialPruning

        # Resolved here: the pruner's settings may point elsewhere in the config (max_resource: trainer.max_epochs).
        pruning = TrialPruning(OmegaConf.create(OmegaConf.to_container(cfg.search, resolve=True)), cfg.optimized_metric)
        trainer.callbacks.append(pruning)
    record.fits(trainer.world_size, resumed_from=ckpt_path, trial=int(cfg.search.trial) if pruning else None)
    for logger in trainer.loggers:
        logger.log_hyperparams({**resolved, **stats, "git": record.git, "command": record.argv})
    if launches_processes(trainer):
        # resume=auto already chose the checkpoint (the children would read the summary rank 0 just rewrote).
        rerun_this_job_in_children(Path(record.run_dir), "resume=null", f'ckpt_path="{ckpt_path}"' if ckpt_path
                                   else "ckpt_path=null")

    watch_startup(trainer, record, cfg.startup_timeout)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise RuntimeError("training was interrupted")
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
    if ckpt_path and not any(k.startswith("val/") for k in metrics):  # resumed with nothing left to train
        metrics = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=True).get("metrics", {}) | metrics
    best_path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    best = None
    if best_path:
        epoch = torch.load(best_path, map_location="cpu", mmap=True, weights_only=True)["epoch"]
        callback = trainer.checkpoint_callback
        best = {callback.monitor or "val/acc_top1": callback.best_model_score.item(), "epoch": epoch}
        tie_value = getattr(callback, "tie_values", {}).get(best_path, math.inf)  # our ModelCheckpoint's
        if math.isfinite(tie_value):  # what chose among tied epochs (val/loss)
            best.setdefault(callback.tie_breaker, tie_value)
    # module.warmup_steps: optim.warmup_ratio may have capped it.
    record.trained(metrics.get("train/images_per_s"), module.warmup_steps, best=best, best_ckpt=best_path or None)
    pruned_at = pruning.pruned_at if pruning else None
    if pruned_at is None and cfg.test:  # a trial its search has dropped is not tested: the search will not pick it
        metrics |= trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)[0]
    record.results(metrics, classes=class_summary(datamodule.classes), pruned_at_epoch=pruned_at)
    if pruning:
        for logger in trainer.loggers:  # the W&B run says how its trial ended
            if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
                logger.experiment.summary.update({"trial": record.trial, "trial_state":
                                                  "pruned" if pruned_at is not None else "complete"})
    if trainer.is_global_zero:
        report(record, trainer)


def report(record: RunRecord, trainer) -> None:
    """What a person at the terminal wants at the end: where the run is, how it did, how to upload it."""
    shown = {k: v for k, v in sorted(record.metrics.items()) if k.startswith(("test/", "val/"))}
    print(f"\nrun folder: {record.run_dir}")
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
                return None
            # Two commands on one job without resume=auto: this one stops (exit code 1), in a sweep too, rather
            # than train the other's jobs again from scratch.
            print(f"error: {run_dir} is being trained by another process", file=sys.stderr, flush=True)
            raise SystemExit(1)
        # resume=auto: a completed job is skipped (its recorded summary still feeds the sweeper), an unfinished one
        # resumes; what it says about the checkpoint it chose goes into the job's record too.
        warnings: list[str] = []
        done = apply_resume(cfg, run_dir, warnings)
        metrics = (done.get("metrics") or {}) if done else run_job("focalnet-train", cfg, train, warnings).metrics
    # What an optimising sweeper (hparams_search=optuna) maximises; None marks a failed trial.
    return metrics.get(cfg.get("optimized_metric"))


def main() -> None:
    """Console entry point (focalnet.cli.run_app: one-line Hydra errors, exit code 1 when any run failed)."""
    run_app(_hydra_main)


if __name__ == "__main__":
    main()
