"""The run record: what a job's summary.json holds, declared once (as focalnet.schema declares the config).

focalnet.run.job writes it, atomically, at each change of status (write_record); resume=auto, the sweep monitor, the
Optuna sweeper and focalnet-report read it (read_record). The declared keys have one type each; a tool may add keys of
its own (evaluate's checkpoint, a search's trial), which are kept as they are. Records written before this module
read the same way (their keys are these); a file that is not a record is refused in one line that says why.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from focalnet.files import write_json


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
    """One stretch of a run: it started, then ended (or was interrupted or killed and continued in the next part)."""

    model_config = ConfigDict(extra="allow")  # how it stopped: signal, epoch, step, checkpoint, requeued, SLURM ids
    started_at: str | None = None
    finished_at: str | None = None  # a killed part: its last write (focalnet.run.job.earlier_parts)
    host: str | None = None
    status: Status | Literal["killed"] | None = None
    wall_time_s: float | None = None


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Status
    error: str | None = None
    run_dir: str | None = None
    sweep_dir: str | None = None
    job_num: int | str | None = None
    seed: int | str | None = None
    overrides: dict[str, Any] = {}
    command: str | None = None
    argv: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    wall_time_s: float | None = None
    parts: list[Part] = []
    requeues: int = 0
    precision: str | None = None
    machine: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None
    params: int | None = None
    flops: int | None = None
    metrics: dict[str, float | None] = {}
    warnings: list[Any] = []
    resumed_from: str | None = None
    bad_checkpoint: str | None = None  # the checkpoint it failed on: resume=auto continues it all the same
    trial: int | None = None  # its number in an Optuna search (focalnet.search.sweeper)
    pruned_at_epoch: int | None = None  # the epoch after which the search's pruner stopped it


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


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    """<run_dir>/summary.json, atomically, after checking it against RunRecord: a writer that puts a wrong type in
    a declared key fails here, not in the report that reads it a week later."""
    RunRecord.model_validate(record)
    write_json(Path(run_dir) / "summary.json", record)
