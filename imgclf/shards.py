"""Sharded data files: a row's shard is fixed by a hash of its image, so small changes stay small.

DVC stores a folder file by file and keeps one copy of each distinct file. When the packed
photos, the preprocessed arrays and the augmented copies are each one file, adding a single
photo changes that file and the cache stores the whole dataset again. Split into ``SHARDS``
files by the image's content hash instead, a new, removed or edited photo rewrites one shard of
each (about 1/64 of the data) and a relabel rewrites none: labels live in the small CSV tables
and ``y`` files. A shard of 100,000 photos at 64x64 RGB is about 20 MB; at a million, 200 MB.

Rows are ordered by shard, then by their order in the manifest, so readers get the same arrays
for the same data, whatever the number of workers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from imgclf.io import PipelineError, atomic_path, read_json, read_npy, require

SHARDS = 64


def shard_of(sha256: str) -> int:
    """The shard of an image with this content hash (hex), stable across runs and machines."""
    return int(sha256[:8], 16) % SHARDS


def shard_path(folder: Path, name: str, shard: int, suffix: str = ".npy") -> Path:
    return Path(folder) / f"{name}-{shard:02d}{suffix}"


def shard_files(folder: Path, name: str, suffix: str = ".npy") -> list[Path]:
    """The shard files of ``name`` in ``folder``, in shard order."""
    return sorted(Path(folder).glob(f"{name}-[0-9][0-9]{suffix}"))


def remove_stale(folder: Path, name: str, written: Iterable[Path], suffix: str = ".npy") -> None:
    """Delete shards of ``name`` that this run did not write (left over from an earlier dataset)."""
    keep = {Path(path).name for path in written}
    for path in shard_files(folder, name, suffix):
        if path.name not in keep:
            path.unlink()


def write_sharded(
    folder: Path, name: str, shard_ids: np.ndarray, chunks: Iterable[np.ndarray], item_shape: tuple, dtype=np.uint8
) -> list[Path]:
    """Stream rows, given in chunks and in non-decreasing shard order, into one .npy per shard.

    Each shard is filled through a memory map (memory holds one chunk), in a temporary file that
    is renamed into place only once every shard is complete: a failed run leaves no shard behind.
    """
    shard_ids = np.asarray(shard_ids, dtype=np.int64)
    if len(shard_ids) and np.any(np.diff(shard_ids) < 0):
        raise ValueError("rows must come in shard order")
    shards, starts, counts = np.unique(shard_ids, return_index=True, return_counts=True)
    written: list[Path] = []
    position = 0  # rows received so far
    current = -1  # index into shards of the open shard
    out = None
    with contextlib.ExitStack() as stack:  # on exit, renames every shard (or, on an error, deletes them)
        for chunk in chunks:
            chunk = np.asarray(chunk)
            offset = 0
            while offset < len(chunk):
                if out is None or position >= starts[current] + counts[current]:
                    if out is not None:
                        out.flush()
                    current += 1
                    if current >= len(shards):
                        raise ValueError(f"expected {len(shard_ids)} rows, received more")
                    path = shard_path(folder, name, int(shards[current]))
                    tmp = stack.enter_context(atomic_path(path))
                    out = np.lib.format.open_memmap(
                        tmp, mode="w+", dtype=dtype, shape=(int(counts[current]), *item_shape)
                    )
                    written.append(path)
                take = min(len(chunk) - offset, starts[current] + counts[current] - position)
                start = position - starts[current]
                out[start : start + take] = chunk[offset : offset + take]
                offset += take
                position += take
        if out is not None:
            out.flush()
            del out
        if position != len(shard_ids) or len(written) != len(shards):
            raise ValueError(f"expected {len(shard_ids)} rows, received {position}")
    remove_stale(folder, name, written)
    return written


def read_sharded(folder: Path, name: str, item_shape: tuple, dtype=np.uint8) -> np.ndarray:
    """All shards of ``name`` in shard order, as one in-memory array (empty when there are none)."""
    parts = [read_npy(path) for path in shard_files(folder, name)]
    if not parts:
        return np.empty((0, *item_shape), dtype=dtype)
    return np.concatenate(parts)


def row_shards(folder: Path, name: str) -> np.ndarray:
    """The shard of each row of :func:`read_sharded`'s array, from the shard files' names and lengths."""
    files = shard_files(folder, name)
    lengths = [len(read_npy(path)) for path in files]
    return np.repeat([int(path.stem.rsplit("-", 1)[1]) for path in files], lengths).astype(np.int64)


def read_split(paths, split: str, empty: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images and label indices of one preprocessed split (``paths`` is the pipeline's Layout).

    ``empty``: the error to raise when the split has no images (what the caller cannot do without them).
    """
    meta = read_json(require(paths.preprocessed_meta, "preprocess"))
    folder = paths.preprocessed_split(split)
    x = read_sharded(folder, "x", tuple(meta["input_shape"]))
    y = read_sharded(folder, "y", (), dtype=np.int64)
    if len(x) != len(y):
        raise PipelineError(f"{folder}: {len(x)} images but {len(y)} labels; rerun preprocess")
    if empty and len(x) == 0:
        raise PipelineError(f"the {split} split is empty: {empty}")
    return x, y
