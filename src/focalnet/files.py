"""Files a run writes: atomically (a reader never sees half a file, a failed write leaves the old one), with
UTC timestamps."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


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
