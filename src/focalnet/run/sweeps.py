"""Sweeps that finish: the sweep's Hydra callback (its folder, its exit code) and one GPU group per parallel job
process (resume=auto and the job's lock are focalnet.run.job's)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from focalnet.record import Status, read_status


class SweepCallback(Callback):
    """Hydra callback of every focalnet run (conf/hydra/default.yaml): makes the sweep folder, and ends a sweep with
    exit code 1 when any of its jobs failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The Optuna sweeper opens its SQLite study in the sweep folder before any job creates that folder.
        sweep_dir = Path(config.hydra.sweep.dir).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # Its name holds the start time and a random id: resuming the sweep means passing it back.
        print(f"sweep folder: {sweep_dir}  (to resume: the same command + hydra.sweep.dir={sweep_dir} resume=auto)",
              flush=True)
        if "submitit" in str(config.hydra.launcher.get("_target_")):
            quiet_sacct()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # A sweep goes on past a failed job (a single run ends with it: focalnet.run.job.run_job). Once all ran, their
        # records say whether any failed, wherever it ran: here, in a parallel launcher's worker, on a SLURM node.
        # Hydra hands its caller no result, so the command's exit code is set here.
        if any(read_status(path) == Status.FAILED for path in Path(config.hydra.sweep.dir).glob("*/summary.json")):
            raise SystemExit(1)


def quiet_sacct() -> None:
    """On a SLURM cluster without accounting (no slurmdbd, as on a workstation's one-node cluster) `sacct` fails,
    and submitit warns at every poll that job states "may be inaccurate". They never were needed: a job is done when
    its result file exists, which submitit checks first. Where sacct fails, submitit stops calling it."""
    import logging
    import shutil
    import subprocess

    sacct = shutil.which("sacct")
    if sacct and subprocess.run([sacct, "-n", "-X", "-j", "1"], capture_output=True).returncode == 0:
        return
    from submitit.slurm.slurm import SlurmInfoWatcher

    SlurmInfoWatcher._make_command = lambda self: None  # submitit's own "nothing to ask sacct" answer
    logging.getLogger(__name__).info("SLURM accounting is off (sacct fails): job states come from the jobs' files")


_claimed: list = []  # the lock file this process holds on its GPU group


class PinDevices(Callback):
    """Pin each job process of a parallel launcher to its own group of `gpus_per_job` GPUs.

    A process claims the first free group (a lock file per group in the sweep folder) at its first job and keeps it
    while it lives: joblib reuses its worker processes, and CUDA reads CUDA_VISIBLE_DEVICES once per process.
    Without GPUs (or with fewer than one group) it does nothing.
    """

    def __init__(self, gpus_per_job: int = 1) -> None:
        self.gpus_per_job = gpus_per_job

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _claimed:
            os.environ["CUDA_VISIBLE_DEVICES"] = _claimed[1]
            return
        import torch

        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        k = self.gpus_per_job
        groups = [",".join(gpus[i : i + k]) for i in range(0, len(gpus) - k + 1, k)]
        if len(groups) < 2:
            return
        locks = Path(config.hydra.sweep.dir) / ".gpu_locks"
        locks.mkdir(parents=True, exist_ok=True)
        for i, group in enumerate(groups):
            lock = open(locks / f"{i}.lock", "w")  # noqa: SIM115 (held until the process ends)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            _claimed[:] = [lock, group]
            os.environ["CUDA_VISIBLE_DEVICES"] = group
            return
        raise RuntimeError(f"hydra.launcher.n_jobs is larger than the {len(groups)} groups of {k} GPUs ({gpus})")
