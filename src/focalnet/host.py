"""What made a run's numbers and where it ran: the machine (CPU, vector instructions, GPUs), the versions, the git
state of the code, the Hydra job's identity."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = ("focalnet", "torch", "lightning", "torchmetrics", "hydra-core", "omegaconf", "wandb", "kornia",
            "optuna", "optuna-dashboard", "hydra-joblib-launcher", "hydra-submitit-launcher")


def git_info(path: Path | None = None, run_dir: Path | None = None) -> dict[str, Any] | None:
    """Commit and dirtiness of the checkout that holds the code; None for an installed wheel or no git.

    A dirty checkout's `git diff HEAD` goes to <run_dir>/git.diff (its path under "diff"): with the commit it is
    the code that ran, but for files git does not track yet.
    """
    path = path or Path(__file__).resolve().parent
    try:
        run = lambda *args: subprocess.run(  # noqa: E731
            ["git", *args], cwd=path, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        top = run("rev-parse", "--show-toplevel")
        if not (Path(top) / "pyproject.toml").exists():
            return None  # some other repository around an installed package
        try:
            commit = run("rev-parse", "HEAD")
        except subprocess.CalledProcessError:
            commit = None  # a repository without commits yet
        info = {"commit": commit, "dirty": bool(run("status", "--porcelain")), "diff": None}
        if info["dirty"] and commit and run_dir is not None:
            info["diff"] = str(Path(run_dir, "git.diff").absolute())
            Path(info["diff"]).write_text(run("diff", "HEAD") + "\n")
        return info
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def machine() -> dict[str, Any]:
    """What made a run's numbers: the CPU (its model name, with family and model numbers where the name is generic,
    as "AMD EPYC" is for Zen 3 and Zen 4 alike), its widest vector instructions, whether it computes bf16 natively
    (what precision=auto follows), and the GPUs' name and count (none: null and 0)."""
    import torch

    from focalnet.precision import BF16_CPU_FLAGS, cpu_flags

    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = info.get("model name") or info.get("Model") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:
        cpu += f" (family {info['cpu family']}, model {info['model']})"
    flags = cpu_flags()
    isa = next((f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2", "asimd") if f in flags), None)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"cpu": cpu, "cpu_isa": isa, "cpu_native_bf16": bool(flags & set(BF16_CPU_FLAGS)),
            "gpu": torch.cuda.get_device_name(0) if gpus else None, "gpu_count": gpus}


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Hydra task overrides ("model.focal_levels=2", "data=cifar10") as {key: value}, values parsed by Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return {o.get_key_element(): o.value() for o in parsed}


def job_info(app: str) -> dict[str, Any]:
    """The Hydra job's identity: overrides, job number, sweep and run folders, the command that reproduces it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra = HydraConfig.get()
    overrides = list(hydra.overrides.task)
    multirun = hydra.mode == RunMode.MULTIRUN
    return {
        "host": platform.node(),
        "pid": os.getpid(),
        "overrides": parse_overrides(overrides),
        "override_string": ",".join(overrides),
        "job_num": hydra.job.get("num", 0) if multirun else 0,
        "sweep_dir": str(Path(hydra.sweep.dir).absolute()) if multirun else None,
        "run_dir": str(Path(hydra.runtime.output_dir).absolute()),
        "command": shlex.join([app, *overrides]),
        "argv": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
