"""What the command-line tools share: where the configs are, Hydra's errors in one line, and the console entry
point's exit code."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from focalnet.runinfo import FAILED


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
    """Console entry point: Hydra's own errors (unknown option, bad override) become one line, and the exit code
    is 1 when any run failed. HYDRA_FULL_ERROR=1 shows full tracebacks instead."""
    FAILED.clear()  # this command's jobs only (tests call main() more than once in a process)
    show_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises instead of printing its multi-line report
    try:
        hydra_main()
    except Exception as error:
        if show_traceback:
            raise
        print(f"error: {hydra_error_line(error)}", file=sys.stderr)
        sys.exit(1)
    if FAILED:
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
