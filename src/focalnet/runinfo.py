"""What a run folder records about itself: summary.json (read by focalnet-report), git state, versions."""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import shlex
import subprocess
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

PACKAGES = ("focalnet", "torch", "lightning", "torchmetrics", "hydra-core", "omegaconf", "wandb", "kornia",
            "hydra-optuna-sweeper", "optuna", "hydra-joblib-launcher", "hydra-submitit-launcher")
JOB_DIRNAME_MAX = 100  # characters of the overrides in a job folder's name (the job number keeps names unique)


FAILED: list[str] = []  # run folders of the jobs that failed in this process (the command then exits 1)


def job_dirname(num: int, overrides: str) -> str:
    """A sweep job's folder name: its number, then its overrides (hydra.job.override_dirname), filesystem-safe.

    Too long, the keys lose their group path (model.focal_levels -> focal_levels), then whole items are dropped from
    the end: the swept values stay readable, the number keeps the name unique, summary.json has the full overrides.
    """
    overrides = re.sub(r"[^\w.+@-]", "_", overrides)
    if len(overrides) > JOB_DIRNAME_MAX:
        items = (item.partition("-") for item in overrides.split("+"))
        overrides = "+".join(key.rsplit(".", 1)[-1] + sep + value for key, sep, value in items)
    while len(overrides) > JOB_DIRNAME_MAX and "+" in overrides:
        overrides = overrides.rsplit("+", 1)[0]
    overrides = overrides[:JOB_DIRNAME_MAX]
    return f"{num}_{overrides}" if overrides else str(num)


# Resolvers of conf/hydra/default.yaml, registered before Hydra composes it. `uid` is cached per config, so the run
# or sweep folder and every job of a sweep (joblib workers get the cache too) see the same one.
if not OmegaConf.has_resolver("uid"):
    OmegaConf.register_new_resolver("uid", lambda: secrets.token_hex(3), use_cache=True)
    OmegaConf.register_new_resolver("job_dirname", job_dirname)


def card_patch_size(image_size):
    """conf/model/card.yaml's patch size for an image size: 4 up to 64 px (8x8 tokens on 32-px digits), then the
    largest divisor of the size up to image_size / 16, so larger images cost about 16x16 tokens; 4 where none
    divides (as the card's fixed 4 did); `auto` (not chosen yet) passes through."""
    if not isinstance(image_size, int):
        return image_size
    return max((p for p in range(4, image_size // 16 + 1) if image_size % p == 0), default=4)


if not OmegaConf.has_resolver("card_patch_size"):
    OmegaConf.register_new_resolver("card_patch_size", card_patch_size)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def one_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty).

    Hydra's "Error in call to target ..." gives way to the error inside it, prefixed with the config key.
    """
    from hydra.errors import InstantiationException

    prefix = ""
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        key = re.search(r"^full_key: (\S+)", str(error), re.MULTILINE)
        prefix = f"{key.group(1)}: " if key else ""
        error = error.__cause__
    text = str(error).strip()
    return prefix + (text.splitlines()[0].strip() if text else type(error).__name__)


@contextmanager
def atomic_file(path: Path, mode: str = "w"):
    """A file that replaces `path` only once it is completely written and on disk. A write that fails part-way
    (ENOSPC, EIO, a kill) leaves `path` as it was and no partial file; the error names `path`, in one line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OSError(error.errno, f"could not write {path}: {error.strerror or error}") from None
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: readers (focalnet-report, a sweep monitor) never see a half-written file."""
    with atomic_file(path) as file:
        file.write(json.dumps(data, indent=2, default=str) + "\n")


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
