"""Data IO shared by all stages: atomic writes, reading artifacts, and the one-line error type.

Every file a stage writes goes through :func:`atomic_path`: written to a temporary
name in the same folder, then renamed, so an interrupted stage never leaves a
half-written artifact that DVC or the next stage could mistake for a good one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas is not needed at run time here: the HTTP service imports this module without it
    import pandas as pd

log = logging.getLogger("imgclf")


class PipelineError(Exception):
    """A problem with the user's data or params: reported as one line, never a traceback."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    The temporary name keeps the suffixes (``.model.tmp-x1y2.keras``, ``.w.tmp-x1y2.weights.h5``)
    because some writers, such as Keras' ``model.save``, choose the format from them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix="".join(path.suffixes), dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; artifacts get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """JSON with sorted keys and a trailing newline, so equal content means equal bytes."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_npy(path: str | Path, mmap: bool = True) -> np.ndarray:
    """Load an array written by :func:`write_npy`, memory-mapped by default (big arrays stay on disk)."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def describe(path: str | Path) -> str:
    """A short 'path (size)' for logs."""
    path = Path(path)
    if path.exists():
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        size = sum(file.stat().st_size for file in files)
        for unit in ("B", "KiB", "MiB", "GiB"):
            if size < 1024 or unit == "GiB":
                return f"{path} ({size:.0f} {unit})" if unit == "B" else f"{path} ({size:.1f} {unit})"
            size /= 1024
    return str(path)


def require(path: str | Path, stage: str) -> Path:
    """``path``, which the ``stage`` stage writes, or the one-line error that says to run that stage."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path} not found: run the {stage} stage first")
    return path


@contextlib.contextmanager
def file_lock(lock_file: Path, what: str, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created if missing, never deleted) while the block
    runs: one process at a time on this machine. The system releases it when its process dies, so a
    killed holder never leaves it taken; a holder that hangs is a one-line error after ``timeout_s``."""
    import fcntl  # POSIX: imported where it is used

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PipelineError(f"{what}: {lock_file} held for {timeout_s:.0f} s") from None
                time.sleep(0.1)  # polling the lock with a deadline
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
