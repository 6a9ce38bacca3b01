"""Where a search's Optuna study lives: a journal file by default, or any Optuna storage URL.

A path (`<sweep>/optuna.journal`) is Optuna's journal file storage, which many processes on many nodes may append to
over NFS (it locks with symlinks). A URL (`sqlite:///...`, `postgresql://...`, `mysql://...`) is a database: SQLite
for one machine, a database server for a cluster that has one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock


def is_url(spec: str) -> bool:
    return "://" in spec


def file_of(spec: str) -> Path | None:
    """The file a file store lives in (a journal path, or SQLite's); None for a database server."""
    if is_url(spec) and not spec.startswith("sqlite:///"):
        return None
    return Path(spec.removeprefix("sqlite:///"))


def prepare(spec: str) -> str:
    """The storage as every trial's job can find it (the jobs run elsewhere: SLURM nodes, other folders): a path made
    absolute and its folder made; a one-line error naming the setting where that fails."""
    path = file_of(spec)
    if path is None:
        return spec
    path = path.absolute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"hydra.sweeper.storage={spec}: its folder cannot be made ({error.strerror})") from None
    return f"sqlite:///{path}" if is_url(spec) else str(path)


def open_storage(spec: str) -> BaseStorage | str:
    """What optuna.create_study/load_study take: the journal file for a path, the URL itself otherwise."""
    if is_url(spec):
        return spec
    return JournalStorage(JournalFileBackend(spec))


def load_study(spec: str, study_name: str, **options) -> optuna.Study:
    """An existing study; a store file that is not there is an error, not a new empty file."""
    path = file_of(spec)
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return optuna.load_study(study_name=study_name, storage=open_storage(spec), **options)


@contextlib.contextmanager
def ask_lock(spec: str):
    """Held while a command counts the study's trials and asks for one, so that commands sharing a study never ask
    beyond n_trials. A file store (journal, SQLite) locks a file beside it with Optuna's symlink lock, which holds
    over NFS; a database server is not locked (two commands may each ask one trial more)."""
    path = file_of(spec)
    if path is None:
        yield
        return
    lock = JournalFileSymlinkLock(f"{path}.ask")
    lock.acquire()
    try:
        yield
    finally:
        lock.release()
