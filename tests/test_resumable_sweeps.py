"""Sweeps that finish: a killed sweep resumed with resume=auto, an interrupted job continuing from its last.ckpt,
jobs in parallel (hydra/launcher=parallel), folders that never collide, and what a run folder records to be rerun."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import BIN, TINY, job_dir, read_summary, run_cli
from focalnet.run.job import apply_resume, job_lock, requeue_slurm_job, resume_state

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ("-m", "model.focal_levels=1,2", "seed=0,1", *TINY, "logger=csv", "hydra.sweep.dir=sweep")  # 4 jobs


def files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file of a job folder but .hydra/ (Hydra rewrites it before the app starts)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() and ".hydra" not in p.parts}


def same_but_speed(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k != "train/images_per_s"} == {
        k: v for k, v in b.items() if k != "train/images_per_s"}


def test_killed_sweep_finishes_with_resume_auto(tmp_path):
    (tmp_path / "wandb-home").mkdir()
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(tmp_path / "wandb-home"))
    sweep = tmp_path / "sweep"
    # A real kill (SIGKILL to the whole process group) once two jobs have completed.
    proc = subprocess.Popen([str(BIN / "focalnet-train"), *SWEEP], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    done: list[Path] = []
    while len(done) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        done = [p.parent for p in sweep.glob("*/summary.json") if read_summary(p.parent)["status"] == "completed"]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [p.parent for p in sweep.glob("*/summary.json") if read_summary(p.parent)["status"] == "completed"]
    assert 2 <= len(done) < 4
    before = {job: files(job) for job in done}

    result = run_cli("focalnet-train", *SWEEP, "resume=auto", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # The same 4 folders (resume=auto is not part of their names), all completed; the finished jobs were skipped
    # without a byte or mtime changed, the others trained.
    jobs = [job_dir(sweep, num) for num in range(4)]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == sorted(p.name for p in jobs)
    assert [read_summary(job)["status"] for job in jobs] == ["completed"] * 4
    assert {job: files(job) for job in done} == before
    assert result.stdout.count("completed earlier, skipped") == len(done)
    assert [(read_summary(j)["overrides"]["model.focal_levels"], read_summary(j)["seed"]) for j in jobs] == [
        (1, 0), (1, 1), (2, 0), (2, 1)]

    from focalnet.studies.report import main

    main([str(sweep)])
    with open(sweep / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job_num"], r["status"]) for r in rows] == [(str(n), "completed") for n in range(4)]
    assert "jobs: 4, completed: 4, failed: 0" in (sweep / "results.md").read_text()


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess, tuple[str, ...]]:
    """A 2-epoch run, put back into the state a kill after its first epoch leaves (last.ckpt of epoch 0, summary
    "running"), then the same command with resume=auto: (run folder, uninterrupted summary, resumed process,
    the overrides)."""
    cwd = tmp_path_factory.mktemp("interrupted")
    run = cwd / "run"
    # A 1-step warm-up (with the default's 80 the lr of 4 steps stays near 0), and the best checkpoint by validation
    # loss, which falls from the first epoch to the second where 64 images' top-1 may tie: the best is the resumed one.
    command = (*TINY, "trainer.max_epochs=2", "optim.warmup_steps=1", "logger=csv",
               "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.monitor=val/loss",
               "callbacks.model_checkpoint.mode=min", f"hydra.run.dir={run}")
    result = run_cli("focalnet-train", *command, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    uninterrupted = read_summary(run)
    ckpts = run / "checkpoints"
    (ckpts / "epoch001.ckpt").unlink()
    (ckpts / "last.ckpt").write_bytes((ckpts / "epoch000.ckpt").read_bytes())
    (run / "summary.json").write_text(json.dumps({**uninterrupted, "status": "running", "metrics": None}))
    return run, uninterrupted, run_cli("focalnet-train", *command, "resume=auto", cwd=cwd), command


def test_interrupted_job_continues_from_its_checkpoint(interrupted_run):
    run, uninterrupted, result, _ = interrupted_run
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    assert uninterrupted["resumed_from"] is None
    # Only the second epoch was trained, and the run ends exactly where the uninterrupted one did. The CSV log keeps
    # the first epoch's rows and has the second's once (those the first run logged after the checkpoint dropped).
    with open(run / "csv" / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f) if r["train/loss_epoch"]] == [0, 1]
    assert summary["best"] == uninterrupted["best"] == {"val/loss": summary["best"]["val/loss"], "epoch": 1}
    assert same_but_speed(summary["metrics"], uninterrupted["metrics"])


def test_resume_rule(tmp_path):
    def job(name: str, status: str | None, ckpt: bool) -> Path:
        folder = tmp_path / name
        (folder / "checkpoints").mkdir(parents=True)
        if status:
            (folder / "summary.json").write_text(json.dumps({"status": status, "metrics": {"val/acc_top1": 0.5}}))
        if ckpt:
            import torch

            torch.save({"global_step": 1}, folder / "checkpoints" / "last.ckpt")
        return folder

    assert resume_state(job("done", "completed", True))[0] == "skip"
    assert resume_state(job("killed", "running", True))[0] == "resume"
    assert resume_state(job("failed", "failed", True))[0] == "scratch"
    assert resume_state(job("early", "running", False))[0] == "scratch"
    assert resume_state(job("none", None, False))[0] == "scratch"

    cfg = OmegaConf.create({"resume": "auto", "ckpt_path": None})
    assert apply_resume(cfg, tmp_path / "done") == {"status": "completed", "metrics": {"val/acc_top1": 0.5}}
    assert apply_resume(cfg, tmp_path / "killed") is None
    assert cfg.ckpt_path == str(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    given = OmegaConf.create({"resume": "auto", "ckpt_path": "mine.ckpt"})  # the user's ckpt_path wins
    assert apply_resume(given, tmp_path / "killed") is None and given.ckpt_path == "mine.ckpt"
    off = OmegaConf.create({"resume": None, "ckpt_path": None})
    assert apply_resume(off, tmp_path / "done") is None and off.ckpt_path is None
    # Any other value runs the job, which fails on the schema (tests/test_reliability.py, BAD_INPUT).
    assert apply_resume(OmegaConf.create({"resume": "yes", "ckpt_path": None}), tmp_path / "done") is None


def test_parallel_jobs(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="no hydra-joblib-launcher (extra: parallel)")
    # 2 worker processes, W&B offline in each; seed 0 twice, then 1, then -1 (out of Lightning's range: fails).
    result = run_cli("focalnet-train", "-m", "hydra/launcher=parallel", "seed=0,0,1,-1", *TINY,
                     "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 1  # the failure happened in a worker process, and still sets the exit code
    first, again, other, bad = (read_summary(job_dir(tmp_path / "sweep", n)) for n in range(4))
    assert bad["status"] == "failed" and bad["error"] == "seed=-1 must be an integer in [0, 4294967295] or null"
    assert f"error: {bad['error']}" in result.stderr
    for s in (first, again, other):
        assert s["status"] == "completed" and len(list(Path(s["run_dir"]).glob("wandb/offline-run-*"))) == 1
    # Jobs 0 and 1 ran at the same time, in two processes.
    start, end = ({n: datetime.fromisoformat(s[k]) for n, s in enumerate((first, again))}
                  for k in ("started_at", "finished_at"))
    assert first["pid"] != again["pid"] and start[1] < end[0] and start[0] < end[1]
    # seed=0 is a seed like any other: the same numbers twice, other ones with seed=1.
    assert first["seed"] == again["seed"] == 0 and other["seed"] == 1
    assert same_but_speed(first["metrics"], again["metrics"])
    assert first["metrics"]["train/loss"] != other["metrics"]["train/loss"]


def test_each_parallel_worker_gets_its_own_gpus(tmp_path, monkeypatch):
    import fcntl

    import torch

    from focalnet.run import sweeps

    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    monkeypatch.setattr(sweeps, "_claimed", [])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    sweeps.PinDevices().on_job_start(config)
    if gpus < 2:  # no GPU, or one: fewer than two groups to share out, nothing to pin
        assert "CUDA_VISIBLE_DEVICES" not in os.environ and not sweeps._claimed
    else:  # the first worker takes the first group of one GPU; released here for the simulation below
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0" and sweeps._claimed[1] == "0"
        sweeps._claimed[0].close()
        monkeypatch.setattr(sweeps, "_claimed", [])

    # 4 GPUs in groups of 2; another worker process holds the first group's lock, so this one takes the second, and
    # keeps it for its next jobs (CUDA reads the variable once per process).
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    (tmp_path / ".gpu_locks").mkdir(exist_ok=True)
    with open(tmp_path / ".gpu_locks" / "0.lock", "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        sweeps.PinDevices(gpus_per_job=2).on_job_start(config)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
        sweeps.PinDevices(gpus_per_job=2).on_job_start(config)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
        # A third process finds no free group: a clear error, not two jobs on one GPU.
        lock, _ = sweeps._claimed
        monkeypatch.setattr(sweeps, "_claimed", [])
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
        with pytest.raises(RuntimeError, match="n_jobs is larger than the 2 groups of 2 GPUs"):
            sweeps.PinDevices(gpus_per_job=2).on_job_start(config)
        lock.close()


def test_runs_started_in_the_same_second_get_their_own_folders(monkeypatch):
    import hydra.core.utils

    from test_sweeps import compose_cfg

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(hydra.core.utils, "datetime", Frozen)
    a, b = compose_cfg(), compose_cfg()
    assert a.hydra.run.dir.startswith("outputs/train/2026-01-02_03-04-05_") and a.hydra.run.dir != b.hydra.run.dir
    assert a.hydra.sweep.dir.startswith("outputs/train/multirun/2026-01-02_03-04-05_")
    assert a.hydra.sweep.dir != b.hydra.sweep.dir
    assert a.hydra.run.dir.rsplit("_", 1)[1] == a.hydra.sweep.dir.rsplit("_", 1)[1]  # one id per command


def test_job_folder_names():
    from focalnet.cli import job_dirname

    assert job_dirname(3, "model.focal_levels-2+seed-1") == "3_model.focal_levels-2+seed-1"
    assert job_dirname(0, "data.root-/data/x y+seed-0") == "0_data.root-_data_x_y+seed-0"
    assert job_dirname(7, "") == "7" and len(job_dirname(12, "a" * 300)) == 103
    # Too long: keys lose their group path, then whole items go from the end; the swept seed stays readable.
    long = "callbacks.progress_bar-null+logger-csv+model.focal_levels-2+model.hidden_size-16+model.num_layers-1+seed-1"
    assert job_dirname(3, long + "+trainer.limit_test_batches-1+trainer.limit_val_batches-1") == (
        "3_progress_bar-null+logger-csv+focal_levels-2+hidden_size-16+num_layers-1+seed-1+limit_test_batches-1"
    )


def test_run_folder_records_what_ran(interrupted_run):
    run, summary, _, command = interrupted_run
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa
    assert summary["git"]["commit"] == git("rev-parse", "HEAD")
    assert summary["git"]["dirty"] == bool(git("status", "--porcelain"))
    if summary["git"]["dirty"]:  # `git diff HEAD` at the start of the run
        assert summary["git"]["diff"] == str(run / "git.diff") and (run / "git.diff").is_file()
    assert summary["argv"] == shlex.join(["focalnet-train", *command])
    assert summary["command"] == shlex.join(["focalnet-train", *command[:-1]])  # Hydra's overrides: no hydra.*
    assert {"torch", "lightning", "hydra-core", "wandb", "python"} <= set(summary["versions"])
    # The loggers get it too (W&B config, here the CSV logger's hparams.yaml).
    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    assert hparams["git"]["commit"] == summary["git"]["commit"] and hparams["command"] == read_summary(run)["argv"]


def test_two_concurrent_resume_auto_commands_train_each_job_once(tmp_path):
    (tmp_path / "wandb-home").mkdir()
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(tmp_path / "wandb-home"))
    env.pop("HYDRA_FULL_ERROR", None)
    command = [str(BIN / "focalnet-train"), "-m", "model.focal_levels=1,2", *TINY, "logger=csv",
               "hydra.sweep.dir=sweep", "resume=auto"]
    # Two terminals, or a requeue racing a manual restart: both start at once on the same sweep folder.
    procs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    for num in range(2):
        job = job_dir(tmp_path / "sweep", num)
        assert read_summary(job)["status"] == "completed" and read_summary(job)["resumed_from"] is None
        # Each job trained by one process: the other skipped it, in progress or completed; one checkpoint per kind.
        skipped = [out for out in outputs if f"resume=auto: {job} is being trained by another process" in out
                   or f"resume=auto: {job} completed earlier, skipped" in out]
        assert len(skipped) == 1, outputs
        assert sorted(p.name for p in (job / "checkpoints").iterdir()) == ["epoch000.ckpt", "last.ckpt"]


def test_job_lock_is_held_by_one_process_and_dies_with_it(tmp_path):
    with job_lock(tmp_path) as busy:
        assert busy is False
        with job_lock(tmp_path) as again:  # another open file description: as another process would see it
            assert again is True
    with job_lock(tmp_path) as busy:
        assert busy is False  # released on exit
    # A process killed while it holds the lock leaves the file but no lock.
    script = (f"import fcntl, time\nlock = open({str(tmp_path / '.lock')!r}, 'a')\n"
              "fcntl.flock(lock, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with job_lock(tmp_path) as busy:
        assert busy is True
    holder.kill()
    holder.wait()
    with job_lock(tmp_path) as busy:
        assert busy is False and (tmp_path / ".lock").read_text() == ""


def test_a_requeue_that_ends_the_job_before_scontrol_returns_counts(tmp_path, monkeypatch, capsys):
    # The requeue makes SLURM send SIGTERM to every process of the job, scontrol included, sometimes before scontrol
    # has read the controller's answer: the requeue took effect, and must not read as failed (CI, a busy host).
    fake = tmp_path / "scontrol"
    fake.write_text(f'#!/bin/sh\nkill -TERM $$\necho "$@" > {tmp_path}/asked\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert requeue_slurm_job("123_4")
    assert (tmp_path / "asked").read_text() == "requeue 123_4\n"
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # unblocked again in this process

    fake.write_text("#!/bin/sh\necho 'Invalid job id specified' >&2\necho 'second line' >&2\nexit 1\n")
    assert not requeue_slurm_job("123_4")
    assert capsys.readouterr().err == "error: scontrol requeue 123_4 failed (exit 1): Invalid job id specified\n"
