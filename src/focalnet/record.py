"""The run record: what a job's summary.json holds, declared once (as focalnet.schema declares the config).

A job (focalnet.run.job) owns its record in memory from its start (RunRecord.begin) and writes it atomically at each
change of status (write_record); whatever builds, trains or evaluates the run records through the record's methods,
which check each value against its key's type as it is set. resume=auto, the sweep monitor, the Optuna sweeper and
focalnet-report read it (read_record). A tool may add keys of its own, which are kept as they are. Records written
before this module read the same way (their keys are these); a file that is not a record is refused in one line that
says why.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from focalnet.files import now, write_json


class Status(str, Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    PRUNED = "pruned"  # stopped early by its search's pruner (focalnet.search.sweeper): a normal end
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # SIGTERM, Ctrl-C, SLURM's warning: resume=auto (or the requeue) continues it

    def __str__(self) -> str:  # "failed" in messages and f-strings, as in the file
        return self.value

    @property
    def ended_well(self) -> bool:
        """Finished as asked: nothing to resume, nothing failed (resume=auto skips it, W&B marks it finished)."""
        return self in (Status.COMPLETED, Status.PRUNED)

    @property
    def failed(self) -> bool:
        return self == Status.FAILED


KILLED = "killed"  # a part's status only: SIGKILL, the OOM killer, a lost node; the next start records it


class Part(BaseModel):
    """One stretch of a run: it started, then ended (or was interrupted or killed and continued in the next part).
    The keys in the order a part records them, the order they have in the file."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    started_at: str | None = None
    host: str | None = None
    slurm_job_id: str | None = None  # under SLURM: the job (or array task), and how often SLURM restarted it
    slurm_restart_count: int | None = None
    signal: str | None = None  # interrupted: SIGTERM, SIGUSR1 (SLURM's warning) or Ctrl-C, and where it saved
    epoch: int | None = None
    step: int | None = None
    checkpoint: str | None = None
    requeued: bool | None = None  # SLURM put it back into its queue: it resumes by itself when it starts again
    status: Status | Literal["killed"] | None = None
    finished_at: str | None = None  # a killed part: its last write (focalnet.run.job.earlier_parts)
    wall_time_s: float | None = None


class RunRecord(BaseModel):
    """A job's summary.json. The keys in the order a training run records them, the order they have in the file."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    # The job: how it stands, who it is (focalnet.host.job_info), where it ran, its parts.
    status: Status
    error: str | None = None
    task: str | None = None
    host: str | None = None
    pid: int | None = None
    overrides: dict[str, Any] = {}
    override_string: str | None = None
    job_num: int | str | None = None
    sweep_dir: str | None = None
    run_dir: str | None = None
    command: str | None = None
    argv: str | None = None
    seed: int | str | None = None
    git: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None
    machine: dict[str, Any] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    warnings: list[Any] = []
    parts: list[Part] = []
    requeues: int = 0
    # What it ran and how that went (focalnet.run.train, focalnet.run.evaluate).
    ckpt_path: str | None = None  # focalnet-eval: the checkpoint it tested, saved at this epoch
    epoch: int | None = None
    model: str | None = None
    data: str | None = None
    precision: str | None = None
    image_size: int | None = None
    patch_size: int | None = None
    params: int | None = None
    flops: int | None = None
    wandb_resumed_id: str | None = None
    wandb: dict[str, Any] | None = None
    threads: dict[str, Any] | None = None
    world_size: int | None = None
    trial: int | None = None  # its number in an Optuna search (focalnet.search.sweeper)
    resumed_from: str | None = None
    time_to_first_step_s: float | None = None
    classes: list[str] | int | None = None
    train_images_per_s: float | None = None
    warmup_steps: int | None = None
    best: dict[str, float | int] | None = None
    best_ckpt: str | None = None
    pruned_at_epoch: int | None = None  # the epoch after which the search's pruner stopped it
    metrics: dict[str, float | None] = {}
    per_class: dict[str, dict[str, float | int]] | None = None
    bad_checkpoint: str | None = None  # the checkpoint it failed on: resume=auto continues it all the same
    wall_time_s: float | None = None

    # --- the job's course (focalnet.run.job) ---

    @classmethod
    def begin(cls, identity: dict[str, Any], *, task: str | None, seed: Any, git: dict, versions: dict,
              machine: dict, warnings: list[str], earlier: list[dict], slurm: dict[str, Any]) -> RunRecord:
        """A job's record at its start: running, who it is and where, and a new part after the `earlier` parts of
        the run it continues (a run that continues keeps its history and its first start)."""
        part = Part(started_at=now(), host=identity.get("host"), **slurm)
        started_at = (earlier[0].get("started_at") if earlier else None) or part.started_at
        return cls(status=Status.RUNNING, error=None, task=task, **identity, seed=seed, git=git, versions=versions,
                   machine=machine, started_at=started_at, finished_at=None,
                   **({"warnings": list(warnings)} if warnings else {}),
                   parts=[*earlier, part], requeues=sum(bool(p.get("requeued")) for p in earlier))  # fmt: skip

    @property
    def part(self) -> Part:
        """This start's part of the run: the last."""
        return self.parts[-1]

    def warn(self, message: str) -> None:
        self.warnings = [*self.warnings, message]

    def complete(self) -> None:
        """Ended as asked: "pruned" where its search's pruner stopped it (a normal end too), else "completed"."""
        self.status = Status.PRUNED if self.pruned_at_epoch is not None else Status.COMPLETED

    def fail(self, error: str, bad_checkpoint: str | None = None, ended: bool = False) -> None:
        """Failed, with a one-line `error`; `bad_checkpoint`: the checkpoint it failed on; `ended`: the process ends
        now, before its part is closed (focalnet.run.job.watch_startup)."""
        self.status, self.error = Status.FAILED, error
        if bad_checkpoint is not None:
            self.bad_checkpoint = bad_checkpoint
        if ended:
            self.finished_at = now()

    def interrupt(self, how: dict[str, Any], then: str, requeued: bool = False) -> None:
        """Stopped by a signal or Ctrl-C. `how`: the signal, and where the run was saved (epoch, step, checkpoint);
        `requeued`: SLURM starts it again; `then`: what continues it."""
        for key, value in how.items():
            setattr(self.part, key, value)
        if requeued:
            self.part.requeued = True
            self.requeues += 1
        where = f" at epoch {how['epoch']}, step {how['step']}" if "epoch" in how else ""
        self.status, self.error = Status.INTERRUPTED, f"interrupted by {how['signal']}{where}; {then}"

    def requeue_failed(self) -> None:
        """scontrol did not put the interrupted job back into the queue: resume=auto continues it instead."""
        self.part.requeued = False
        self.requeues -= 1
        self.error = self.error.split(";")[0] + "; the requeue failed: resume=auto continues the run"

    def end_part(self, seconds: float) -> None:
        """This start's part ends now, `seconds` after it began, as the run stands; the run's wall time is the sum
        of its parts'."""
        end = now()
        self.part.status, self.part.finished_at, self.part.wall_time_s = self.status, end, round(seconds, 3)
        self.wall_time_s = round(sum(p.wall_time_s or 0 for p in self.parts), 3)
        self.finished_at = end

    # --- what runs (focalnet.run.train, focalnet.run.evaluate, focalnet.run.build, focalnet.run.callbacks) ---

    def describe(self, model: str, data: str | None, seed: int | None) -> None:
        """The model's name, the data config's, and the seed Lightning set."""
        self.seed, self.model, self.data = seed, model, data

    def tests_checkpoint(self, path: str, epoch: int | None) -> None:
        self.ckpt_path, self.epoch = path, epoch

    def use_precision(self, precision: str) -> None:
        self.precision = precision

    def images(self, size: int, patch_size: int | None = None) -> None:
        """The size of the images the model takes, and its patch size where it has one."""
        self.image_size = size
        if patch_size is not None:
            self.patch_size = patch_size

    def model_size(self, params: int, flops: int) -> None:
        """Parameters, and multiply-adds per image (focalnet.model_stats)."""
        self.params, self.flops = params, flops

    def use_wandb(self, project: str | None, group: str | None, mode: str, resumed_id: str | None = None) -> None:
        """Logs to this W&B project and group; `resumed_id`: the W&B run of the checkpoint it resumes, logged into."""
        if resumed_id is not None:
            self.wandb_resumed_id = resumed_id
        self.wandb = {"project": project, "group": group, "mode": mode}

    def use_threads(self, threads: dict[str, Any]) -> None:
        """The CPU threads it runs on, and who chose them (focalnet.threads.threads_used)."""
        self.threads = threads

    def fits(self, world_size: int, resumed_from: str | None, trial: int | None = None) -> None:
        """Trains in `world_size` processes, from the checkpoint `resumed_from` (None: from the start); `trial`: its
        number in an Optuna search."""
        self.world_size = world_size
        if trial is not None:
            self.trial = trial
        self.resumed_from = resumed_from

    def first_step(self, seconds: float, threads: int) -> None:
        """The first training batch started `seconds` after the job, on `threads` CPU threads (Lightning's DDP
        launcher divides the cores among the ranks after the Trainer was built)."""
        self.time_to_first_step_s = round(seconds, 3)
        if self.threads is not None:
            self.threads = {**self.threads, "threads": threads}

    def trained(self, images_per_s: float | None, warmup_steps: int, best: dict[str, float | int] | None = None,
                best_ckpt: str | None = None) -> None:
        """Training's speed and warm-up; `best`: the best checkpoint's score and epoch, in `best_ckpt`."""
        self.train_images_per_s, self.warmup_steps = images_per_s, warmup_steps
        if best is not None:
            self.best, self.best_ckpt = best, best_ckpt

    def results(self, metrics: dict[str, float | None], classes: list[str] | int | None = None,
                per_class: dict[str, dict] | None = None, pruned_at_epoch: int | None = None) -> None:
        """The metrics it ended with; the class names (their number beyond 50) and the accuracy per class; the
        epoch after which its search's pruner stopped it."""
        if classes is not None:
            self.classes = classes
        if pruned_at_epoch is not None:
            self.pruned_at_epoch = pruned_at_epoch
        self.metrics = metrics
        if per_class is not None:
            self.per_class = per_class


class NotARecord(ValueError):
    """A summary.json that cannot be read as a run record; the message is one line naming the file and why."""


def read_record(path: Path) -> RunRecord:
    """The record in `path` (a summary.json, or the job folder holding it)."""
    path = Path(path)
    path = path / "summary.json" if path.is_dir() else path
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise NotARecord(f"{path}: cannot be read ({error.strerror})") from None
    except ValueError as error:
        raise NotARecord(f"{path}: not JSON ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise NotARecord(f"{path}: not a run record (a JSON {type(data).__name__}, not an object)")
    try:
        return RunRecord.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(map(str, first["loc"]))
        raise NotARecord(f"{path}: not a run record ({key}: {first['msg']})") from None


def read_status(path: Path) -> Status | None:
    """The status of the record in `path`; None where there is none, or none that reads."""
    try:
        return read_record(path).status
    except NotARecord:
        return None


def write_record(run_dir: Path, record: RunRecord | dict[str, Any]) -> None:
    """<run_dir>/summary.json, atomically: the keys that were set, in RunRecord's order. A dict is checked against
    RunRecord first: a wrong type in a declared key fails here, not in the report that reads it a week later."""
    record = RunRecord.model_validate(record)
    write_json(Path(run_dir) / "summary.json", record.model_dump(exclude_unset=True))
