"""Atomic writes and inter-process locks: a killed process never leaves half a file."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
import yaml

TEMP_SUFFIX = ".tmp"
# mkstemp creates 0600 files; written files get the usual mode (0666 less the umask).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda h: h.write(text.encode()))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_yaml(path: Path, data: Any) -> None:
    write_text(path, yaml.safe_dump(data, sort_keys=False))


def torch_save(path: Path, obj: Any) -> None:
    _atomic(path, lambda h: torch.save(obj, h))


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock shared by every process on this machine (and NFS with flock support)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def remove_stale_temps(directory: Path) -> int:
    """Delete the temp files a killed process left in ``directory`` (``_atomic`` names them
    ``.<name>.<random>.tmp``); only call it while no other process writes there."""
    removed = 0
    if directory.is_dir():
        for stale in directory.glob(f".*{TEMP_SUFFIX}"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                removed += 1
    return removed


class LockBusy(RuntimeError):
    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"{path} is held by pid {holder or '?'}")


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Non-blocking exclusive lock: raises LockBusy (with the holder's pid) when another
    process holds it. The kernel drops it when the holder dies, even by SIGKILL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise LockBusy(path, handle.read().strip()) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
