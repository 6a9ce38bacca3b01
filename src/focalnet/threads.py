"""A job's CPU threads: as many as it was given, waiting passively where the cores are shared, so that a busy machine
costs it its fair share.

torch starts one thread per core of the machine, whatever this process was given: under `taskset`, or on a SLURM node
whose cgroup does not pin cores, that oversubscribes. And OpenMP threads spin at every barrier: alone that saves the
wake-up, beside other work they lose whole scheduler slices (beside one busy loop the default digits run takes 1.7x
as long spinning as waiting passively: docs/performance.md). So they wait passively only where other work is there to
compete.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

WAIT_POLICY = "OMP_WAIT_POLICY"


def run_queue() -> int:
    """Processes runnable on the machine now, this one included (/proc/loadavg's fourth field)."""
    return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])


def cores_shared(runnable: Callable[[], int] = run_queue, looks: int = 5) -> bool:
    """Whether other work competes for this process's cores: SLURM gave it fewer CPUs than it may run on (the node's
    other cores serve other jobs), or other runnable processes and this one's threads outnumber its cores, in most of
    `looks` looks a few milliseconds apart (a process that only passes by is no competitor)."""
    threads, cores = thread_budget()[0], len(os.sched_getaffinity(0))
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) < cores:
        return True
    try:
        others = []
        for _ in range(looks):
            others.append(runnable() - 1)
            time.sleep(0.004)
    except (OSError, ValueError, IndexError):  # no /proc: nothing known, OpenMP's default
        return False
    return sorted(others)[looks // 2] + threads > cores


def passive_wait_by_default() -> None:
    """OMP_WAIT_POLICY=PASSIVE where the cores are shared, unless the user set it: OpenMP reads it once, when torch
    loads it, so this runs before the first import of torch (focalnet/__init__.py)."""
    if not os.environ.get(WAIT_POLICY) and cores_shared():
        os.environ[WAIT_POLICY] = "PASSIVE"


def thread_budget(requested: int | None = None) -> tuple[int, str]:
    """(threads, where the number came from): `trainer.threads`, else SLURM's cpus-per-task, else OMP_NUM_THREADS
    (set by the user, by joblib for a parallel sweep's workers, by Lightning for the DDP ranks it starts), else the
    cores this process may run on (its CPU affinity)."""
    if requested:
        return int(requested), "trainer.threads"
    for variable in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            return int(value), variable
    return len(os.sched_getaffinity(0)), "CPU affinity"


def configure_threads(requested: int | None = None) -> None:
    """Set torch's threads from thread_budget."""
    import torch

    threads, source = thread_budget(requested)
    if source in ("trainer.threads", "SLURM_CPUS_PER_TASK"):
        # The DDP ranks this process starts take as many each (Lightning divides the cores only where it is unset).
        os.environ["OMP_NUM_THREADS"] = str(threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def threads_used(requested: int | None = None) -> dict:
    """What the summary records: {"threads": torch's now, "source": thread_budget's, "wait_policy"}."""
    import torch

    source = thread_budget(requested)[1]
    return {"threads": torch.get_num_threads(), "source": source, "wait_policy": os.environ.get(WAIT_POLICY, "default")}


def trainer(threads: int | None = None, **kwargs):
    """Lightning's Trainer(**kwargs), made after this process's threads are set (configure_threads): what the
    config's trainer group instantiates, `trainer.threads` included."""
    from lightning.pytorch import Trainer

    configure_threads(threads)
    return Trainer(**kwargs)
