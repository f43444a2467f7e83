"""Sharded data files: a row's shard is fixed by a hash of its image, so small changes stay small.

DVC stores a folder file by file and keeps one copy of each distinct file. When the packed
photos, the preprocessed arrays and the augmented copies are each one file, adding a single
photo changes that file and the cache stores the whole dataset again. Split into ``SHARDS``
files by the image's content hash instead, a new, removed or edited photo rewrites one shard of
each (about 1/64 of the data), and a relabel mostly the small CSV tables and ``y`` files (plus the
shards of the few rows it moves between splits, and, when it renames the file, its ingest shard,
whose order follows the listing). A shard of 100,000 photos at 64x64 RGB is about 20 MB; at a million, 200 MB.

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


class ShardedArray:
    """The shards of one array, read lazily through memory maps: indexing reads only the rows asked
    for, so a sample of a split far larger than memory costs the sample (evaluate's baseline,
    export's calibration images). ``np.asarray`` reads it whole."""

    def __init__(self, folder: Path, name: str, item_shape: tuple, dtype=np.uint8):
        files = shard_files(folder, name)
        self.shards = [int(path.stem.rsplit("-", 1)[1]) for path in files]  # x-07.npy -> 7
        self._parts = [read_npy(path) for path in files]
        self.lengths = [len(part) for part in self._parts]
        self._starts = np.cumsum([0, *self.lengths])
        self.shape = (int(self._starts[-1]), *item_shape)
        self.dtype = np.dtype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        rows = np.arange(len(self))[index]
        if np.ndim(rows) == 0:
            part = int(np.searchsorted(self._starts, rows, side="right")) - 1
            return np.asarray(self._parts[part][rows - self._starts[part]])
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        parts = np.searchsorted(self._starts, rows, side="right") - 1
        for part in np.unique(parts):
            mask = parts == part
            out[mask] = self._parts[part][rows[mask] - self._starts[part]]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = np.concatenate(self._parts) if self._parts else np.empty(self.shape, self.dtype)
        return whole if dtype is None else whole.astype(dtype)

    def row_shards(self) -> np.ndarray:
        """The shard of each row, from the shard files' names and lengths."""
        return np.repeat(np.array(self.shards, dtype=np.int64), self.lengths)


def read_sharded(folder: Path, name: str, item_shape: tuple, dtype=np.uint8) -> np.ndarray:
    """All shards of ``name`` in shard order, as one in-memory array (empty when there are none)."""
    return np.asarray(ShardedArray(folder, name, item_shape, dtype))


def read_split(paths, split: str, empty: str | None = None, lazy: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images and label indices of one preprocessed split (``paths`` is the pipeline's Layout).

    ``empty``: the error to raise when the split has no images (what the caller cannot do without them).
    ``lazy``: the images as a :class:`ShardedArray` (index it to read rows) instead of in memory.
    """
    meta = read_json(require(paths.preprocessed_meta, "preprocess"))
    folder = paths.preprocessed_split(split)
    x = ShardedArray(folder, "x", tuple(meta["input_shape"]))
    y = ShardedArray(folder, "y", (), dtype=np.int64)
    if (x.shards, x.lengths) != (y.shards, y.lengths):
        raise PipelineError(f"{folder}: the image and label shards do not match; rerun preprocess")
    if empty and len(x) == 0:
        raise PipelineError(f"the {split} split is empty: {empty}")
    return (x if lazy else np.asarray(x)), np.asarray(y)
