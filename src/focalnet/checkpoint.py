"""Reading a training checkpoint as focalnet's tools do, and saying in one line why a file is not one."""

from __future__ import annotations

import os
import zipfile


class CheckpointError(ValueError):
    """A checkpoint a run cannot start from: `path` is `why` (empty, truncated, another model's, ...). A run that
    fails on one records it (the summary's bad_checkpoint): resume=auto continues that run all the same."""

    def __init__(self, path, why: str):
        super().__init__(f"ckpt_path={path} is {why}")
        self.path, self.why = str(path), why


def read_checkpoint(path) -> dict:
    """The checkpoint in `path` as focalnet's tools load one: weights only and memory-mapped, so its tensors stay on
    disk and loading it is a cheap test that the file is intact. A file that is not one fails in one line naming it
    and saying why (torch's own error is an errno, or advice about zipfile serialization)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"ckpt_path={path}: no such file") from None
    except Exception as error:
        raise CheckpointError(path, unreadable(path, error)) from None


def unreadable(path, error: Exception) -> str:
    """Why torch.load failed on `path`, as the file shows it (torch.save writes a zip archive)."""
    size = os.path.getsize(path)
    if size == 0:
        return "empty (0 bytes)"
    with open(path, "rb") as file:
        zipped = file.read(4) == b"PK\x03\x04"
    if not zipped:
        return "not a checkpoint (not the zip archive torch.save writes)"
    if not zipfile.is_zipfile(path):
        return f"truncated ({size} bytes, the end of its zip archive is missing)"
    return f"not a readable training checkpoint ({type(error).__name__})"
