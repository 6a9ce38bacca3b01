"""What the command-line tools share: where the configs are and the resolvers they use (job folder names, the card's
patch size), errors in one line, and the console entry point."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from omegaconf import OmegaConf

JOB_DIRNAME_MAX = 100  # characters of the overrides in a job folder's name (the job number keeps names unique)


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


def config_dir() -> str:
    """conf/ inside the installed package (the wheel ships it there), else the checkout's top-level conf/."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return str(packaged if packaged.is_dir() else here.parents[1] / "conf")


def hydra_error_line(error: BaseException) -> str:
    """One line from a Hydra composition error, with the available options when Hydra lists them."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if "Available options" in str(error):
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options"))
        options = [line for line in lines[start + 1 :] if not line.startswith(("Config search path", "provider="))]
        return f"{lines[0]} (available: {', '.join(options)})"
    # "Could not override 'x'." is followed by the reason or the fix on the next line.
    return " ".join(lines[:2]) if lines[0].startswith("Could not override") and len(lines) > 1 else lines[0]


def run_app(hydra_main: Callable[[], None]) -> None:
    """Console entry point: Hydra's own errors (unknown option, bad override) become one line (HYDRA_FULL_ERROR=1
    shows full tracebacks instead). A failed job makes the exit code 1 itself: a run as it fails
    (focalnet.run.job.run_job), a sweep once all its jobs ran (focalnet.run.sweeps.SweepCallback)."""
    show_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises instead of printing its multi-line report
    try:
        hydra_main()
    except Exception as error:
        if show_traceback:
            raise
        print(f"error: {hydra_error_line(error)}", file=sys.stderr)
        sys.exit(1)


# The argparse pieces of the plain (non-Hydra) tools: focalnet-bench, -viz, -export.


class Parser(argparse.ArgumentParser):
    """argparse, with errors in one line."""

    def error(self, message):  # the one-line error, without argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def list_of(convert, choices=None):
    """argparse type for comma-separated values, checked against `choices`."""

    def parse(text: str) -> list:
        values = [convert(v.strip()) for v in text.split(",") if v.strip()]
        for v in values:
            if choices is not None and v not in choices:
                raise argparse.ArgumentTypeError(f"invalid choice {v!r} (choose from {', '.join(choices)})")
        if not values:
            raise argparse.ArgumentTypeError(f"no value in {text!r}")
        return values

    return parse


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, yaml.safe_load(value)  # so 128 is an int, 0.1 a float, [2,2,6,2] a list, true a bool
