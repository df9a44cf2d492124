"""Atomic file writes: a killed process never leaves half a file.

Every writer goes through :func:`atomic_write`: a temp file ``.<name>.<random>.tmp`` in the
target's directory, flushed and fsynced, then renamed over the target. A temp file a killed
process left behind is removed by :func:`remove_stale_temps`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"
# mkstemp creates 0600 files; written files get the usual mode (0666 less the umask).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(handle)`` on a temp file next to ``path`` and rename it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda h: h.write(data))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_yaml(path: str | os.PathLike[str], data: Any) -> Path:
    """YAML; without PyYAML (a bare GPU machine running benchmarks/gpu_check.py with torch
    alone) as indented JSON, which is YAML too: ``yaml.safe_load`` reads either."""
    try:
        import yaml
    except ImportError:
        return write_text(path, json.dumps(data, indent=2) + "\n")
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def torch_save(path: str | os.PathLike[str], obj: Any) -> Path:
    import torch  # only callers that save tensors pay for the import

    return atomic_write(path, lambda h: torch.save(obj, h))


def remove_stale_temps(directory: Path) -> int:
    """Delete the temp files a killed process left in ``directory``; only call it while no
    other process writes there."""
    removed = 0
    if directory.is_dir():
        for stale in directory.glob(f".*{TEMP_SUFFIX}"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                removed += 1
    return removed
