"""focalnet-train: train one FocalNet, or sweep many (`-m`), from the Hydra configs in conf/.

Every run folder holds the composed config (.hydra/), checkpoints/ (best and last), the W&B run (wandb/) and
summary.json. A failed run records status "failed" and its one-line error there and prints `error: ...`; a sweep
goes on to its next job (unless fail_fast=true) and the command exits 1 at the end if any job failed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from focalnet import schema
from focalnet.cli import config_dir, hydra_error_line
from focalnet.runinfo import FAILED, git_info, job_info, machine, now, one_line, versions, write_json
from focalnet.sweeps import apply_resume, job_lock

log = logging.getLogger(__name__)


def run_job(app: str, cfg: DictConfig, body: Callable[[DictConfig, dict], None]) -> dict[str, Any]:
    """Run `body(cfg, summary)` as one Hydra job: summary.json "running" -> "completed"/"failed", one W&B run.

    Exceptions become a failed summary, `error: <one line>` on stderr and the traceback in error.log; the process
    environment and sys.argv are restored afterwards, so the next job of a sweep starts clean.
    """
    from lightning.pytorch.utilities import rank_zero_only

    # `import lightning` gives its logger a console handler of its own; Hydra's handlers (console and the run's
    # log file) already receive everything, so each message would print twice.
    logging.getLogger("lightning").handlers.clear()

    info = job_info(app)
    run_dir = Path(info["run_dir"])
    rank_zero = rank_zero_only.rank == 0
    summary: dict[str, Any] = {"status": "running", "error": None, "task": cfg.get("task_name"), **info}
    summary["seed"] = cfg.get("seed")
    summary.update(git=git_info(run_dir=run_dir if rank_zero else None), versions=versions(), machine=machine(),
                   started_at=now(), finished_at=None)
    # A run that continues an interrupted one in this folder (resume=auto, a SLURM requeue) keeps its history: each
    # part's start, end, wall time and how it stopped; the run's wall time is the sum.
    parts = earlier_parts(run_dir, cfg.get("ckpt_path"))
    part: dict[str, Any] = {"started_at": summary["started_at"], "host": info["host"], **slurm_job()}
    summary.update(parts=[*parts, part], requeues=sum(p.get("requeued", False) for p in parts))
    summary["started_at"] = (parts[0].get("started_at") if parts else None) or part["started_at"]

    def save() -> None:
        if rank_zero:
            write_json(run_dir / "summary.json", summary)

    save()
    env, argv, start = dict(os.environ), list(sys.argv), time.perf_counter()
    requeue = None
    try:
        body(cfg, summary)
        summary["status"] = "completed"
    except Exception as error:
        summary.update(status="failed", error=one_line(error))
        if rank_zero:
            (run_dir / "error.log").write_text(traceback.format_exc())
        else:  # where rank 0 reads it when the process group never formed (watch_startup)
            error_log = run_dir / f"error-rank{rank_zero_only.rank}.log"
            error_log.write_text(f"{summary['error']}\n{traceback.format_exc()}")
        print(f"error: {summary['error']}", file=sys.stderr, flush=True)
        FAILED.append(str(run_dir))
    except SystemExit as stop:  # SIGTERM/SIGUSR1 (Lightning's SIGTERMException, after saving last.ckpt) or Ctrl-C
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        interrupt = getattr(stop, "interrupt", None) or {"signal": "SIGTERM" if isinstance(stop, SIGTERMException)
                                                         else "Ctrl-C"}
        part.update(interrupt)
        where = f" at epoch {interrupt['epoch']}, step {interrupt['step']}" if "epoch" in interrupt else ""
        # SLURM's warning ahead of preemption or the time limit: the job goes back into the queue and, started
        # again, resumes from last.ckpt by itself. Anything else is continued by hand.
        if interrupt["signal"] == "SIGUSR1" and part.get("slurm_job_id") and "checkpoint" in interrupt:
            requeue = part["slurm_job_id"]
            part["requeued"] = True
            summary["requeues"] += 1
            then = f"SLURM job {requeue} requeued: it resumes from last.ckpt when it starts again"
        else:
            then = "resume=auto continues the run"
        summary.update(status="interrupted", error=f"interrupted by {interrupt['signal']}{where}; {then}")
        # 128 + 15, a shell's code for a process SIGTERM ended: the job did not complete (a sweep stops here too).
        raise SystemExit(143 if isinstance(stop, SIGTERMException) else stop.code) from None
    finally:
        part.update(status=summary["status"], finished_at=now(), wall_time_s=round(time.perf_counter() - start, 3))
        total = sum(p.get("wall_time_s") or 0 for p in summary["parts"])
        summary.update(wall_time_s=round(total, 3), finished_at=now())
        save()
        _finish(failed=summary["status"] != "completed")
        os.environ.clear()
        os.environ.update(env)  # Lightning and W&B set MASTER_PORT, WANDB_MODE, PL_GLOBAL_SEED, ...
        sys.argv[:] = argv
        if requeue and rank_zero and not requeue_slurm_job(requeue):  # last: requeueing a running job ends it
            part["requeued"], summary["requeues"] = False, summary["requeues"] - 1
            summary["error"] = summary["error"].split(";")[0] + "; the requeue failed: resume=auto continues the run"
            save()
    if summary["status"] == "failed" and cfg.get("fail_fast"):
        raise SystemExit(1)
    return summary


def earlier_parts(run_dir: Path, ckpt_path: str | None) -> list[dict]:
    """The parts of the run this start continues: those of the summary in `run_dir` when that run was interrupted
    and this start resumes from a checkpoint inside `run_dir` (resume=auto, a SLURM requeue); else none."""
    try:
        earlier = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return []
    if not ckpt_path or earlier.get("status") != "interrupted" or run_dir.resolve() not in Path(ckpt_path).resolve(
    ).parents:  # fmt: skip
        return []
    # A summary written before parts were recorded: the run's one earlier part, as far as it was recorded.
    keys = ("started_at", "finished_at", "wall_time_s", "status", "host")
    return earlier.get("parts") or [{k: earlier.get(k) for k in keys}]


def slurm_job() -> dict[str, Any]:
    """This process's SLURM job (the array task's id where it is one) and how often SLURM restarted it; {} outside."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else job
    return {"slurm_job_id": job_id, "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0))}


def requeue_slurm_job(job_id: str) -> bool:
    """Put the job back into SLURM's queue, as Lightning's auto-requeue does (but after the exact checkpoint)."""
    import subprocess

    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode:
        print(f"error: scontrol requeue {job_id} failed: {one_line(RuntimeError(result.stderr))}", file=sys.stderr,
              flush=True)
    return result.returncode == 0


def _finish(failed: bool) -> None:
    """Close this job's W&B run and process group, or the next job in this process would log into / hang on them."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=int(failed))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rerun_this_job_in_children(run_dir: Path, *overrides: str) -> None:
    """Make Lightning's DDP launcher start the other ranks on exactly this job.

    The launcher re-executes sys.argv plus `hydra.run.dir=<HydraConfig run.dir>`. In a sweep that argv is the whole
    sweep and run.dir a fresh timestamp; instead the children compose this job's saved config in this job's folder,
    plus `overrides` (decisions rank 0 took at the job's start, which the children must not take again).
    """
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.output_subdir is None:
        raise ValueError("hydra.output_subdir=null: multi-process training needs the job's saved config")
    config_path = str(run_dir / hydra_cfg.output_subdir)
    sys.argv[:] = [sys.argv[0], "--config-path", config_path, "--config-name", "config", *overrides]
    OmegaConf.set_readonly(hydra_cfg, False)
    hydra_cfg.run.dir = str(run_dir)
    OmegaConf.set_readonly(hydra_cfg, True)


def watch_startup(trainer, summary: dict, timeout: float) -> None:
    """Bound the start-up of a multi-process run: until every rank has joined the process group, a rank that exits
    (its error read from error-rank<k>.log), a rank 0 that is gone, or `timeout` seconds stop every rank at once,
    the failed summary naming the cause. Without it, Lightning's child observer SIGKILLs rank 0 (nothing recorded)
    or the others wait for rank 0 until gloo's 30-minute timeout."""
    import threading

    import torch.distributed as dist
    from lightning.pytorch.utilities import rank_zero_only

    if trainer.world_size < 2:
        return
    rank, parent, run_dir = rank_zero_only.rank, os.getppid(), Path(summary["run_dir"])
    procs = lambda: getattr(trainer.strategy.launcher, "procs", None) or []  # noqa: E731 (filled once launched)

    def stop(message: str) -> None:
        if rank == 0:
            summary.update(status="failed", error=message, finished_at=now())
            write_json(run_dir / "summary.json", summary)
        print(f"error: {message}", file=sys.stderr, flush=True)
        for proc in procs():
            proc.kill()
        if rank == 0:
            _finish(failed=True)
        os._exit(1)

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not (dist.is_available() and dist.is_initialized()):
            for k, proc in enumerate(procs(), 1):
                if proc.poll() is not None:
                    log_file = run_dir / f"error-rank{k}.log"
                    cause = log_file.read_text().splitlines()[0] if log_file.is_file() else "see its output above"
                    stop(f"rank {k} exited with code {proc.returncode} before the process group formed: {cause}")
            if rank != 0 and os.getppid() != parent:
                stop("rank 0 exited before the process group formed")
            if time.monotonic() > deadline:
                stop(f"the {trainer.world_size} processes did not form a process group within startup_timeout="
                     f"{timeout} s (a rank hangs, or starts slower: raise startup_timeout)")  # fmt: skip
            time.sleep(0.1)

    threading.Thread(target=watch, name="focalnet-startup-watch", daemon=True).start()


def launches_processes(trainer) -> bool:
    """Whether fit() will start the other ranks itself (DDP on one machine), not SLURM or torchrun."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return trainer.world_size > 1 and environment is not None and not environment.creates_processes_externally


def instantiate_all(group: DictConfig | None) -> list:
    """The `_target_` entries of a group like callbacks/ or logger/ (entries set to null are skipped)."""
    from hydra.utils import instantiate

    return [instantiate(c, _convert_="all") for c in (group or {}).values() if c is not None and "_target_" in c]


def resolve_trainer_precision(cfg: DictConfig, summary: dict) -> None:
    """trainer.precision=auto becomes what this machine runs best (focalnet.precision); the summary says which."""
    from focalnet.precision import resolve_precision

    summary["precision"] = cfg.trainer.precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)


def build_trainer(cfg: DictConfig, summary: dict):
    """Loggers (W&B name and group filled in from the job), callbacks and the Trainer."""
    from hydra.utils import instantiate

    resolve_trainer_precision(cfg, summary)
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is not None:
        wandb_cfg.name = wandb_cfg.name or summary["override_string"] or None
        if wandb_cfg.group is None and summary["sweep_dir"]:
            wandb_cfg.group = Path(summary["sweep_dir"]).name
        # focalnet-report logs a sweep's table and plots to the same project and group.
        mode = "offline" if wandb_cfg.offline else os.environ.get("WANDB_MODE", "online")
        summary["wandb"] = {"project": wandb_cfg.project, "group": wandb_cfg.group, "mode": mode}
    from lightning.pytorch.callbacks import LearningRateMonitor

    loggers = instantiate_all(cfg.get("logger"))
    callbacks = instantiate_all(cfg.get("callbacks"))
    if not loggers:  # logger=none: the learning rate has nowhere to go, and LearningRateMonitor would refuse to run
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def train(cfg: DictConfig, summary: dict) -> None:
    started = time.perf_counter()
    import lightning as L
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate, to_absolute_path

    import focalnet
    from focalnet.callbacks import FirstStepTimer
    from focalnet.module import check_checkpoint

    schema.validate(cfg)  # every key's type and range, before anything is built
    # What focalnet's modules warn about while the run is built and trained (a split that leaves less than half of
    # the data to train on, ...) goes into the summary as well as the log.
    logging.getLogger("focalnet").addHandler(SummaryWarnings(summary))
    for warning in schema.warnings(cfg):
        log.warning(warning)
    summary["seed"] = L.seed_everything(cfg.seed, workers=True)
    choices = HydraConfig.get().runtime.choices
    summary["model"] = cfg.model.get("name") or "focalnet_card"
    summary["data"] = choices.get("data")
    # A `???` in the overlay cannot demand it: merged over the model config's null, OmegaConf keeps the null.
    if choices.get("experiment") == "finetune" and not cfg.model.get("pretrained"):
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
    model = build_model(cfg.model)
    stats = focalnet.model_stats(model, cfg.data.image_size, cfg.data.in_channels)
    summary.update(stats)
    # The resolved config plus the chosen group options travels to W&B and into every checkpoint.
    resolved = {**OmegaConf.to_container(cfg, resolve=True), "choices": _choices()}
    module = instantiate(cfg.module, model=model, optim=resolved["optim"], run_config=resolved, _recursive_=False)
    if ckpt_path:
        check_checkpoint(ckpt_path, module)
    continue_wandb_run(cfg, ckpt_path, summary)
    trainer = build_trainer(cfg, summary)
    summary["world_size"] = trainer.world_size
    trainer.callbacks.append(FirstStepTimer(summary, started))
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
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        epoch = torch.load(best, map_location="cpu", mmap=True, weights_only=True)["epoch"]
        summary["best"] = {"val/acc_top1": trainer.checkpoint_callback.best_model_score.item(), "epoch": epoch}
        summary["best_ckpt"] = best
    if cfg.test:
        metrics.update(trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)[0])
    summary["metrics"] = metrics
    if trainer.is_global_zero:
        report(summary, trainer)


class SummaryWarnings(logging.Handler):
    """Collects the warnings of focalnet's loggers into summary["warnings"], for this job only: the handler of a
    sweep's earlier job in the same process gives way to the next job's."""

    def __init__(self, summary: dict) -> None:
        super().__init__(logging.WARNING)
        for old in [h for h in logging.getLogger("focalnet").handlers if isinstance(h, SummaryWarnings)]:
            logging.getLogger("focalnet").removeHandler(old)
        self.summary = summary

    def emit(self, record: logging.LogRecord) -> None:
        self.summary.setdefault("warnings", []).append(record.getMessage())


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


def continue_wandb_run(cfg: DictConfig, ckpt_path: str | None, summary: dict) -> None:
    """A run resumed from a checkpoint (resume=auto after SIGTERM or preemption, or ckpt_path=) logs into the W&B run
    that wrote the checkpoint: same id, resume="allow" (online W&B appends to it; offline, a second folder
    offline-run-<time>-<same id> that `wandb sync` uploads into that run)."""
    import torch

    if not ckpt_path or (cfg.get("logger") or {}).get("wandb") is None or cfg.logger.wandb.get("id"):
        return
    run_id = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=True).get("wandb_run_id")
    if run_id:
        with open_dict(cfg):
            cfg.logger.wandb.id, cfg.logger.wandb.resume = run_id, "allow"
        summary["wandb_resumed_id"] = run_id


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


def _choices() -> dict[str, str]:
    """The config group options this run picked, e.g. {"data": "digits", "model": "card", ...}."""
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices
    return {k: v for k, v in choices.items() if not k.startswith("hydra") and v is not None}


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
        # resumes.
        done = apply_resume(cfg, run_dir)
        summary = done or run_job("focalnet-train", cfg, train)
    # What an optimising sweeper (hparams_search=optuna) maximises; None marks a failed trial.
    return (summary.get("metrics") or {}).get(cfg.get("optimized_metric"))


def main(hydra_main: Callable[[], None] = _hydra_main) -> None:
    """Console entry point: Hydra's own errors (unknown option, bad override) become one line, and the exit code
    is 1 when any run failed. HYDRA_FULL_ERROR=1 shows full tracebacks instead."""
    FAILED.clear()  # this command's jobs only (tests call main() more than once in a process)
    show_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises instead of printing its multi-line report
    try:
        hydra_main()
    except Exception as error:
        if show_traceback:
            raise
        print(f"error: {hydra_error_line(error)}", file=sys.stderr)
        sys.exit(1)
    if FAILED:
        sys.exit(1)


if __name__ == "__main__":
    main()
