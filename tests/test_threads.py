"""A job computes with the threads it was given, waiting passively, and its summary says how many and why."""

from __future__ import annotations

import os

import pytest

from conftest import TINY, read_summary, run_cli
from focalnet.threads import thread_budget


@pytest.fixture
def no_thread_settings(monkeypatch):
    for variable in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)


def test_the_budget_comes_from_the_config_then_slurm_then_openmp_then_the_affinity(no_thread_settings, monkeypatch):
    cores = len(os.sched_getaffinity(0))
    assert thread_budget(None) == (cores, "CPU affinity")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_budget(None) == (3, "OMP_NUM_THREADS")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "5")
    assert thread_budget(None) == (5, "SLURM_CPUS_PER_TASK")
    assert thread_budget(7) == (7, "trainer.threads")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "")  # set but empty, as some SLURM set-ups leave it
    assert thread_budget(None) == (3, "OMP_NUM_THREADS")


def test_a_run_takes_slurms_cpus_per_task_or_trainer_threads_and_records_them(no_thread_settings, monkeypatch,
                                                                               tmp_path):
    monkeypatch.delenv("OMP_WAIT_POLICY")  # focalnet's own default, not the suite's (conftest)
    result = run_cli("focalnet-train", *TINY, "logger=csv", f"hydra.run.dir={tmp_path}/slurm", cwd=tmp_path,
                     env={"SLURM_CPUS_PER_TASK": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_summary(tmp_path / "slurm")["threads"] == {"threads": 1, "source": "SLURM_CPUS_PER_TASK",
                                                           "wait_policy": "PASSIVE"}
    result = run_cli("focalnet-train", *TINY, "logger=csv", "trainer.threads=1", f"hydra.run.dir={tmp_path}/set",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_summary(tmp_path / "set")["threads"]["threads"] == 1


def test_a_bad_thread_count_fails_in_one_line(tmp_path):
    result = run_cli("focalnet-train", *TINY, "logger=csv", "trainer.threads=0", f"hydra.run.dir={tmp_path}/run",
                     cwd=tmp_path)
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "trainer.threads=0" in line
