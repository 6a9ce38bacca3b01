"""Shared fixtures: running the focalnet-train / focalnet-eval CLIs in a subprocess, composing configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The suite shares 2 cores with whatever else runs; OpenMP's default busy-waiting then makes torch 5-10x slower
# (each op waits for a thread that has no core). Set before torch is imported, so it holds here and in subprocesses.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BIN = Path(sys.executable).parent
NO_GPU = "needs a CUDA GPU: none here (make device-check runs the GPU tests where one is)"


# pytest-xdist (make test: --dist loadfile --no-loadscope-reorder) hands the files out in collection order: the two
# workers finish together only when the longest files start first (alphabetically, or by test count, they came last).
LONGEST_FIRST = ("test_search.py", "test_study.py", "test_reliability.py", "test_sweeps.py", "test_resumable_sweeps.py",
                 "test_train.py", "test_resume.py", "test_threads.py", "test_export.py", "test_slurm.py")


def pytest_collection_modifyitems(config, items):
    """The longest files first (LONGEST_FIRST); tests marked `gpu` (tests/test_gpu.py) skip with one reason where
    torch sees no CUDA GPU."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch  # here, not at the top: only a run that collected a GPU test pays for it

    if torch.cuda.is_available():
        return
    for item in gpu_tests:
        item.add_marker(pytest.mark.skip(reason=NO_GPU))


def run_cli(app: str, *overrides: str, cwd: Path, timeout: float = 300, env: dict | None = None
            ) -> subprocess.CompletedProcess:  # fmt: skip
    """Run a console script of this venv the way a user would, offline and quiet, from `cwd` (`env`: more variables).

    A subprocess, never in-process: Lightning's DDP launcher re-executes sys.argv, which inside pytest is pytest.
    """
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(cwd / "wandb-home"), **(env or {}))
    env.pop("HYDRA_FULL_ERROR", None)
    (cwd / "wandb-home").mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(BIN / app), *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def job_dir(sweep_dir: Path, num: int) -> Path:
    """The folder of job `num` of a sweep: <num>_<its overrides> (conf/hydra/default.yaml)."""
    (path,) = sweep_dir.glob(f"{num}_*")
    return path


# A few seconds of training on digits: small enough for the test suite, long enough to learn.
QUICK = (
    "trainer.max_epochs=3",
    "data.batch_size=16",
    "model.hidden_size=32",
    "model.num_layers=2",
    "optim.optimizer.lr=5e-3",
    "optim.warmup_epochs=0.5",
    "callbacks.progress_bar=null",
)
TINY = (  # one short epoch: for runs that test plumbing, not learning
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "model.hidden_size=16",
    "model.num_layers=1",
    "callbacks.progress_bar=null",
)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One short digits run with W&B offline that keeps every epoch's checkpoint (shared by several tests)."""
    cwd = tmp_path_factory.mktemp("trained")
    run_dir = cwd / "run"
    result = run_cli(
        "focalnet-train", *QUICK, f"hydra.run.dir={run_dir}", "callbacks.model_checkpoint.save_top_k=-1", cwd=cwd
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir
