"""What the command-line tools share: where the configs are, and Hydra's errors in one line."""

from __future__ import annotations

from pathlib import Path


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
