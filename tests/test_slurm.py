"""Sweeps on a real SLURM cluster (scripts/slurm-local.sh up): jobs submitted through Hydra's submitit launcher,
DDP over SLURM tasks, preemption (SIGUSR1) with requeue, and a failing job. Without a cluster they skip, saying how
to start one; in CI (CI=true) a missing cluster fails them."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import QUICK, TINY, job_dir, read_summary, run_cli

pytestmark = pytest.mark.slurm

CONF = os.environ.get("SLURM_CONF") or os.path.join(os.environ.get("FOCALNET_SLURM_DIR", "/tmp/focalnet-slurm"),
                                                    "slurm.conf")  # fmt: skip
# One CPU per job, no GPU, a time limit that ends a stuck test's job.
SLURM = ("hydra/launcher=slurm_cpu", "hydra.launcher.timeout_min=10")


def cluster_problem() -> str | None:
    if not Path(CONF).is_file():
        return f"no SLURM cluster ({CONF} missing): `bash scripts/slurm-local.sh up` starts one"
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=dict(os.environ, SLURM_CONF=CONF), capture_output=True,
                               text=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"no SLURM cluster: sinfo: {error}"
    if state.returncode or not {"idle", "mix", "alloc"} & set(state.stdout.split()):
        return f"no SLURM cluster answers for {CONF}: {(state.stderr or state.stdout).strip()}"
    return None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict:
    """The environment that points the SLURM commands at the cluster."""
    problem = cluster_problem()
    if problem and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {problem}")
    if problem:
        pytest.skip(problem)
    return {"SLURM_CONF": CONF}


def wandb_ids(run_dir: Path) -> list[str]:
    return sorted(p.name.rsplit("-", 1)[1] for p in run_dir.glob("wandb/offline-run-*"))


def test_a_sweep_runs_as_slurm_jobs_and_reports(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("focalnet-train", "-m", *SLURM, *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                     env=slurm)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Bypassing sacct error" not in result.stdout + result.stderr  # accounting off: explained once, not per poll
    summaries = [read_summary(job_dir(sweep, k)) for k in (0, 1)]
    assert all(s["status"] == "completed" and s["world_size"] == 1 for s in summaries)
    assert len({s["parts"][0]["slurm_job_id"] for s in summaries}) == 2  # two SLURM jobs (an array's two tasks)
    assert summaries[0]["wandb"]["group"] == summaries[1]["wandb"]["group"] == sweep.name
    assert all(len(wandb_ids(job_dir(sweep, k))) == 1 for k in (0, 1))
    report = run_cli("focalnet-report", str(sweep), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    rows = (sweep / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",completed," in row for row in rows[1:]), rows


def test_ddp_over_two_slurm_tasks_makes_one_run(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("focalnet-train", "-m", *SLURM, "trainer=multinode_cpu", "hydra.launcher.tasks_per_node=2",
                     *TINY, "trainer.limit_test_batches=null", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                     env=slurm)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p for p in sweep.iterdir() if not p.name.startswith(".") and p.is_dir()]
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["world_size"] == 2
    assert len(list(tmp_path.rglob("summary.json"))) == 1 and len(wandb_ids(run_dir)) == 1
    # The test accuracy is over every test image, not rank 0's half: the evaluation of the same checkpoint in one
    # process gives the same number.
    evaluation = run_cli("focalnet-eval", f"ckpt_path={summary['best_ckpt']}", f"hydra.run.dir={tmp_path / 'eval'}",
                         cwd=tmp_path)  # fmt: skip
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert read_summary(tmp_path / "eval")["metrics"]["test/acc_top1"] == pytest.approx(
        summary["metrics"]["test/acc_top1"], abs=1e-6)  # fmt: skip


def test_a_preempted_job_is_requeued_and_ends_as_the_uninterrupted_run(slurm, tmp_path, trained_run):
    sweep = tmp_path / "sweep"
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(tmp_path), **slurm)
    env.pop("HYDRA_FULL_ERROR", None)
    # Both CPUs of the node, so that the job computes on as many threads as the uninterrupted run (trained_run): one
    # thread would sum in another order.
    cmd = [str(Path(os.sys.executable).parent / "focalnet-train"), "-m", *SLURM, "hydra.launcher.cpus_per_task=2",
           *QUICK, f"hydra.sweep.dir={sweep}"]
    launcher = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # SLURM's warning, as preemption or the time limit sends it, once the job has trained its first epoch.
    deadline = time.monotonic() + 180
    while not list(sweep.glob("0*/checkpoints/epoch*.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    run_dir = job_dir(sweep, 0)
    job = read_summary(run_dir)["parts"][0]["slurm_job_id"]
    subprocess.run(["scancel", "--signal=USR1", job], env=env, check=True)
    output = launcher.communicate(timeout=240)[0].decode()
    assert launcher.returncode == 0, output[-3000:]

    summary = read_summary(run_dir)
    first, second = summary["parts"]
    assert summary["status"] == "completed" and summary["requeues"] == 1
    assert first["signal"] == "SIGUSR1" and first["requeued"] and first["status"] == "interrupted"
    assert first["slurm_job_id"] == second["slurm_job_id"] == job
    assert (first["slurm_restart_count"], second["slurm_restart_count"]) == (0, 1)
    assert 0 < first["step"] and first["checkpoint"] == summary["resumed_from"]
    assert second["status"] == "completed" and summary["wall_time_s"] == pytest.approx(
        first["wall_time_s"] + second["wall_time_s"], abs=2e-3)  # fmt: skip
    # Resumed exactly: every metric as the uninterrupted run's (same seed and threads, on this machine).
    assert summary["threads"] == {"threads": 2, "source": "SLURM_CPUS_PER_TASK", "wait_policy": "PASSIVE"}
    full = read_summary(trained_run)["metrics"]
    keys = [k for k in full if k.startswith(("test/", "val/", "train/")) and k != "train/images_per_s"]
    for key in keys:
        assert summary["metrics"][key] == pytest.approx(full[key], abs=1e-6), key
    # One W&B run, continued: two offline folders of the same id (wandb sync uploads both into it).
    ids = wandb_ids(run_dir)
    assert len(ids) == 2 and ids[0] == ids[1] == summary["wandb_resumed_id"]
    scheduler = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    assert "Restarts=1" in scheduler, scheduler
    torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_a_failing_slurm_job_fails_alone_and_the_command_exits_1(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("focalnet-train", "-m", *SLURM, *TINY, "model.focal_kernel=4,3", f"hydra.sweep.dir={sweep}",
                     cwd=tmp_path, env=slurm)  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    failed, completed = read_summary(job_dir(sweep, 0)), read_summary(job_dir(sweep, 1))
    assert failed["status"] == "failed" and completed["status"] == "completed"
    assert failed["error"].startswith("model.focal_kernel=4") and failed["parts"][0]["slurm_job_id"]
    assert (job_dir(sweep, 0) / "error.log").is_file() and not (job_dir(sweep, 0) / "checkpoints").exists()


def test_a_pruned_search_runs_as_slurm_jobs_against_one_study(slurm, tmp_path):
    from test_search import SEARCH, State, load_study, started_while_others_ran

    # Two trials in flight, each its own SLURM job reporting into the sweep folder's one study; a pruned trial's slot
    # takes the next trial at once.
    sweep = tmp_path / "search"
    result = run_cli("focalnet-train", *SEARCH, *SLURM, "trainer.max_epochs=2", "hydra.sweeper.n_trials=6",
                     "hydra.sweeper.n_jobs=2",
                     "logger=csv", f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=slurm, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [read_summary(sweep / str(n)) for n in range(6)]
    lrs = [s["overrides"]["optim.optimizer.lr"] for s in summaries]
    assert lrs[:5] == [1e-9, 0.005, 1e-9, 1e-9, 0.005]
    assert [s["status"] for s in summaries] == ["pruned" if lr == 1e-9 else "completed" for lr in lrs]
    assert len({s["parts"][0]["slurm_job_id"] for s in summaries}) == 6 and all(s["trial"] == n for n, s in
                                                                                enumerate(summaries))  # fmt: skip
    assert [t.state for t in load_study(sweep).trials] == [State.PRUNED if lr == 1e-9 else State.COMPLETE
                                                           for lr in lrs]  # fmt: skip
    assert started_while_others_ran(summaries)
