"""A job computes with the threads it was given, waiting passively, and its summary says how many and why."""

from __future__ import annotations

import os

import pytest

from conftest import TINY, read_summary, run_cli
from focalnet.threads import cores_shared, thread_budget


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


def test_threads_wait_passively_only_where_other_work_competes_for_the_cores(no_thread_settings, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # 2 cores, 2 threads
    monkeypatch.setattr("time.sleep", lambda s: None)

    def queue(*counts):  # what /proc/loadavg says at each look: runnable processes, this one included
        looks = iter(counts)
        return lambda: next(looks)

    assert not cores_shared(queue(1, 1, 1, 1, 1))  # alone: spinning saves each wake-up
    assert cores_shared(queue(2, 2, 3, 2, 2))  # a busy loop beside it
    assert not cores_shared(queue(1, 2, 1, 1, 1))  # a process that only passed by
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert not cores_shared(queue(2, 2, 2, 2, 2))  # one thread beside one busy loop: a core each
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert cores_shared(queue(1, 1, 1, 1, 1))  # SLURM gave 1 CPU of the 2 it may run on: the other is another job's


def test_a_run_takes_slurms_cpus_per_task_or_trainer_threads_and_records_them(no_thread_settings, tmp_path):
    result = run_cli("focalnet-train", *TINY, "logger=csv", f"hydra.run.dir={tmp_path}/slurm", cwd=tmp_path,
                     env={"SLURM_CPUS_PER_TASK": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_summary(tmp_path / "slurm")["threads"] == {"threads": 1, "source": "SLURM_CPUS_PER_TASK",
                                                           "wait_policy": "PASSIVE"}  # the suite's (conftest)
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
