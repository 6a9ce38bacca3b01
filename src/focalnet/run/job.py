"""A job's lifecycle, from its start to its summary.json, for every command-line tool that runs Hydra jobs.

A job holds `<run_dir>/.lock` while it runs (job_lock); resume=auto skips a completed job or points it at its
last.ckpt, or at its newest intact checkpoint where last.ckpt does not load (resume_state, apply_resume). run_job
writes summary.json atomically at each change of status ("running", then "completed", "pruned", "failed" or
"interrupted"), records each part of a run that was interrupted or killed and continued, and requeues a SLURM job
warned of preemption. The job owns its record (focalnet.record.RunRecord): what it runs records through the record's
methods. A failed run ends its command with exit code 1; a sweep goes on to its next job. watch_startup bounds the
start-up of a multi-process run; finish closes W&B and the process group.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from focalnet.checkpoint import CheckpointError, read_checkpoint
from focalnet.cli import one_line
from focalnet.host import git_info, job_info, machine, versions
from focalnet.record import KILLED, NotARecord, RunRecord, Status, read_record, write_record

log = logging.getLogger(__name__)


def loads(path: Path) -> bool:
    """Whether `path` is an intact checkpoint (read_checkpoint)."""
    try:
        read_checkpoint(path)
    except (CheckpointError, OSError):
        return False
    return True


def resume_state(run_dir: Path) -> tuple[str, dict | None]:
    """resume=auto's rule: completed or pruned -> "skip"; failed -> "scratch", unless a checkpoint failed it (its
    summary's bad_checkpoint, or a last.ckpt that does not load: the summaries of earlier versions) -> "resume";
    a checkpoints/last.ckpt -> "resume"; else "scratch"."""
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        record = read_record(run_dir / "summary.json")
    except NotARecord:
        return ("resume" if last.is_file() else "scratch"), None
    summary = record.model_dump(mode="json", exclude_unset=True)
    if record.status.ended_well:
        return "skip", summary
    if record.status.failed:
        on_checkpoint = record.bad_checkpoint or (last.is_file() and not loads(last))
        return ("resume" if on_checkpoint else "scratch"), summary
    return ("resume" if last.is_file() else "scratch"), summary


def resume_checkpoint(run_dir: Path) -> tuple[str | None, str | None]:
    """The checkpoint resume=auto continues `run_dir` from, and a warning where it is not checkpoints/last.ckpt.
    Where last.ckpt does not load: the run's other checkpoint that loads and holds the most training (the highest
    global_step, which copies and touches do not change as they do mtimes; the newer file on a tie); with none,
    None: the run starts over."""
    folder = run_dir / "checkpoints"
    last = folder / "last.ckpt"
    try:
        read_checkpoint(last)
        return str(last), None
    except FileNotFoundError:
        problem = f"{last} is missing"
    except CheckpointError as error:
        problem = f"{last} is {error.why}"
    found = []
    for path in set(folder.glob("*.ckpt")) - {last}:
        try:
            checkpoint = read_checkpoint(path)
        except (CheckpointError, OSError):
            continue
        found.append((checkpoint.get("global_step") or 0, path.stat().st_mtime, path, checkpoint.get("epoch")))
    if not found:
        return None, f"resume=auto: {problem} and no other checkpoint in {folder} loads: the run starts over"
    step, _, path, epoch = max(found, key=lambda f: f[:2])
    return str(path), f"resume=auto: {problem}; resuming from {path} (epoch {epoch}, step {step}) instead"


def apply_resume(cfg: DictConfig, run_dir: Path, warnings: list[str] | None = None) -> dict | None:
    """With resume=auto: a completed job's summary (the caller skips the job), else None after pointing
    cfg.ckpt_path at the checkpoint the job resumes from (resume_checkpoint: a fallback or a start over is logged
    and appended to `warnings`, for the job's summary). A ckpt_path given by the user wins. A job that SLURM
    started again (requeued after preemption: SLURM_RESTART_COUNT > 0) resumes as with resume=auto."""
    if cfg.get("resume") != "auto" and not int(os.environ.get("SLURM_RESTART_COUNT") or 0):
        return None  # null, or a bad value that the job then fails on (focalnet.schema)
    state, done = resume_state(run_dir)
    if state == "skip":
        print(f"resume=auto: {run_dir} {done['status']} earlier, skipped", flush=True)
        return done
    if state == "resume" and not cfg.ckpt_path:
        cfg.ckpt_path, warning = resume_checkpoint(run_dir)
        if warning:
            log.warning(warning)
            if warnings is not None:
                warnings.append(warning)
    return None


@contextmanager
def job_lock(run_dir: Path):
    """Hold `<run_dir>/.lock` while this process runs the job: yields False, or True when a live process holds it
    already (two `resume=auto` commands on one sweep, a requeue racing a manual restart). An flock, so the OS
    releases it when its process dies: a killed run leaves no stale lock. The file is never written: a completed
    job's folder stays byte for byte as it was. Ranks other than 0 (the DDP processes rank 0 starts on its job) take
    none."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        yield False
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield True
            return
        yield False


def run_job(app: str, cfg: DictConfig, body: Callable[[DictConfig, RunRecord], None],
            warnings: list[str] | None = None) -> RunRecord:
    """Run `body(cfg, record)` as one Hydra job: summary.json "running" -> "completed"/"failed", one W&B run.

    Exceptions become a failed record, `error: <one line>` on stderr and the traceback in error.log; the process
    environment and sys.argv are restored afterwards, so the next job of a sweep starts clean. A failed run (not a
    sweep's job, unless fail_fast=true) then ends the command with exit code 1. `warnings`: what the job's start
    said before it ran (apply_resume), for the record.
    """
    from lightning.pytorch.utilities import rank_zero_only

    # `import lightning` gives its logger a console handler of its own; Hydra's handlers (console and the run's
    # log file) already receive everything, so each message would print twice.
    logging.getLogger("lightning").handlers.clear()

    identity = job_info(app)
    run_dir = Path(identity["run_dir"])
    rank_zero = rank_zero_only.rank == 0
    # A run that continues an unfinished one in this folder (resume=auto, a SLURM requeue) keeps its history: each
    # part's start, end, wall time and how it stopped; the run's wall time is the sum. Read before this start
    # writes into the folder (git.diff, summary.json): a killed part's end is the folder's last write.
    parts = earlier_parts(run_dir, cfg.get("ckpt_path"))
    record = RunRecord.begin(identity, task=cfg.get("task_name"), seed=cfg.get("seed"),
                             git=git_info(run_dir=run_dir if rank_zero else None), versions=versions(),
                             machine=machine(), warnings=warnings or [], earlier=parts, slurm=slurm_job())

    def save() -> None:
        if rank_zero:
            write_record(run_dir, record)

    save()
    env, argv, start = dict(os.environ), list(sys.argv), time.perf_counter()
    requeue = None
    try:
        with sigterm_stops_the_job():
            body(cfg, record)
            record.complete()
    except Exception as error:
        record.fail(one_line(error), bad_checkpoint=error.path if isinstance(error, CheckpointError) else None)
        if rank_zero:
            (run_dir / "error.log").write_text(traceback.format_exc())
        else:  # where rank 0 reads it when the process group never formed (watch_startup)
            error_log = run_dir / f"error-rank{rank_zero_only.rank}.log"
            error_log.write_text(f"{record.error}\n{traceback.format_exc()}")
        print(f"error: {record.error}", file=sys.stderr, flush=True)
    except SystemExit as stop:  # SIGTERM/SIGUSR1 (Lightning's SIGTERMException, after saving last.ckpt) or Ctrl-C
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        how = getattr(stop, "interrupt", None) or {"signal": "SIGTERM" if isinstance(stop, SIGTERMException)
                                                   else "Ctrl-C"}  # fmt: skip
        # SLURM's warning ahead of preemption or the time limit: the job goes back into the queue and, started
        # again, resumes from last.ckpt by itself. Anything else is continued by hand.
        if how["signal"] == "SIGUSR1" and record.part.slurm_job_id and "checkpoint" in how:
            requeue = record.part.slurm_job_id
            then = f"SLURM job {requeue} requeued: it resumes from last.ckpt when it starts again"
        else:
            then = "resume=auto continues the run"
        record.interrupt(how, then, requeued=requeue is not None)
        # 128 + 15, a shell's code for a process SIGTERM ended: the job did not complete (a sweep stops here too).
        raise SystemExit(143 if isinstance(stop, SIGTERMException) else stop.code) from None
    finally:
        record.end_part(time.perf_counter() - start)
        save()
        finish(failed=not record.status.ended_well)
        os.environ.clear()
        os.environ.update(env)  # Lightning and W&B set MASTER_PORT, WANDB_MODE, PL_GLOBAL_SEED, ...
        sys.argv[:] = argv
        if requeue and rank_zero and not requeue_slurm_job(requeue):  # last: requeueing a running job ends it
            record.requeue_failed()
            save()
    # A run's failure is its command's (exit code 1; a DDP rank's too, which Lightning's launcher watches). A sweep
    # goes on to its next job and exits 1 once all ran (focalnet.run.sweeps.SweepCallback), unless fail_fast=true.
    if record.status.failed and (cfg.get("fail_fast") or record.sweep_dir is None):
        raise SystemExit(1)
    return record


@contextmanager
def sigterm_stops_the_job():
    """SIGTERM while the job runs but outside Lightning's loops (its start, between fit and test, after the test),
    where the default action would kill the process and leave its record "running", stops the job at once as
    interrupted. Inside a loop Lightning's own handler, which calls this one too, stops after the current batch."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame) -> None:
        if callable(previous):  # a search's own stop, run in this process
            previous(signum, frame)
        if signal.getsignal(signal.SIGTERM) is on_sigterm:  # no Lightning loop to stop after its batch
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            raise SIGTERMException

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def earlier_parts(run_dir: Path, ckpt_path: str | None) -> list[dict]:
    """The parts of the run this start continues: those of the summary in `run_dir` when that run did not end well
    (interrupted, killed, failed) and this start resumes from a checkpoint inside `run_dir`
    (resume=auto, a SLURM requeue); else none. A summary still "running" was killed (SIGKILL, the OOM killer, a
    lost node: this start holds the job's lock, which the OS released when that process died): its last part is
    recorded as killed, ended at the folder's last write."""
    try:
        earlier = read_record(run_dir / "summary.json")
    except NotARecord:
        return []
    inside = ckpt_path and run_dir.resolve() in Path(ckpt_path).resolve().parents
    if not inside or earlier.status.ended_well:
        return []
    summary = earlier.model_dump(mode="json", exclude_unset=True)
    # A summary written before parts were recorded: the run's one earlier part, as far as it was recorded.
    keys = ("started_at", "finished_at", "wall_time_s", "status", "host")
    parts = summary.get("parts") or [{k: summary.get(k) for k in keys}]
    if earlier.status == Status.RUNNING:
        parts[-1] = {**parts[-1], "status": KILLED, **killed_at(run_dir, parts[-1].get("started_at"))}
    return parts


def killed_at(run_dir: Path, started_at: str | None) -> dict[str, Any]:
    """A killed part's end and wall time, from the newest file it wrote in `run_dir` (a checkpoint, summary.json,
    the loggers' files, which the CSV and W&B loggers write as they log). Not .hydra/ nor the *.log files: this
    start has rewritten or appended to them already."""
    try:
        written = max((p.stat().st_mtime for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".log"
                       and ".hydra" not in p.relative_to(run_dir).parts), default=None)  # fmt: skip
    except OSError:  # a file gone meanwhile (W&B's service may still be closing the killed run's): no estimate
        return {}
    if written is None or not started_at:
        return {}
    end = datetime.fromtimestamp(written, timezone.utc)
    wall_time = max(0.0, (end - datetime.fromisoformat(started_at)).total_seconds())
    return {"finished_at": end.isoformat(timespec="milliseconds"), "wall_time_s": round(wall_time, 3)}


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

    # The requeue ends this job: SLURM sends SIGTERM to each of its processes, scontrol among them, and on a busy
    # host it lands before scontrol has read the controller's answer: a requeue that took effect read as failed
    # (exit -15). Blocked, the signal waits until scontrol has exited (the mask passes to the child); SIGKILL comes
    # only after SLURM's KillWait.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if result.returncode:
        first = next(iter(result.stderr.strip().splitlines()), "")  # one line, as every error the jobs print
        print(f"error: scontrol requeue {job_id} failed (exit {result.returncode})" + (f": {first}" if first else ""),
              file=sys.stderr, flush=True)
    return result.returncode == 0


def finish(failed: bool) -> None:
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


def watch_startup(trainer, record: RunRecord, timeout: float) -> None:
    """Bound the start-up of a multi-process run: until every rank has joined the process group, a rank that exits
    (its error read from error-rank<k>.log), a rank 0 that is gone, or `timeout` seconds stop every rank at once,
    the failed record naming the cause. Without it, Lightning's child observer SIGKILLs rank 0 (nothing recorded)
    or the others wait for rank 0 until gloo's 30-minute timeout."""
    import threading

    import torch.distributed as dist
    from lightning.pytorch.utilities import rank_zero_only

    if trainer.world_size < 2:
        return
    rank, parent, run_dir = rank_zero_only.rank, os.getppid(), Path(record.run_dir)
    procs = lambda: getattr(trainer.strategy.launcher, "procs", None) or []  # noqa: E731 (filled once launched)

    def observers() -> list:
        return [t for t in threading.enumerate() if type(t).__name__ == "_ChildProcessObserver"]

    def hold_observers() -> None:
        # Until the group forms this watch owns a rank's failure: Lightning's child observer, polling every 5 s, would
        # SIGKILL rank 0 (-9, nothing recorded) if its poll fell between a rank's exit and this watch's next look.
        for thread in observers():
            if not getattr(thread, "held_by_focalnet", False):
                run, thread.held_by_focalnet = thread._run, True
                thread._run = lambda run=run: dist.is_initialized() and run()

    def stop(message: str) -> None:
        for thread in observers():  # nor at its next poll, while W&B still closes: exit 1
            thread._run = lambda: True
        if rank == 0:
            record.fail(message, ended=True)
            write_record(run_dir, record)
        print(f"error: {message}", file=sys.stderr, flush=True)
        for proc in procs():
            proc.kill()
        if rank == 0:
            finish(failed=True)
        os._exit(1)

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not (dist.is_available() and dist.is_initialized()):
            hold_observers()
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
