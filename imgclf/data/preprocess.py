"""preprocess: one size, one colour mode, and the train/val/test split.

Output arrays are uint8 (N, H, W, C): the model does its own scaling, so every
consumer (Keras, TFLite, predict) sees the same input contract.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from imgclf.data.images import COLOR_MODES, ImageError, prepare
from imgclf.data.ingest import EXTRA_ID, IngestedImages, Ref
from imgclf.data.shards import shard_of, write_sharded
from imgclf.io import PipelineError


def _prepare_ref(reader: IngestedImages, ref: Ref, size: int, color_mode: str) -> np.ndarray:
    try:
        return prepare(reader.image(ref), size, color_mode)
    except ImageError as error:  # validate decoded it; reaching this means the packed data changed
        raise PipelineError(f"image #{ref.index} no longer decodes ({error}): rerun ingest and validate") from error


def write_split(
    reader: IngestedImages,
    rows: pd.DataFrame,
    folder: Path,
    size: int,
    color_mode: str,
    workers: int | None = None,
) -> None:
    """Decode, convert and resize ``rows`` in parallel, streaming into ``x-SS.npy``/``y-SS.npy`` shards.

    ``rows`` come in shard order (:func:`shard_order`) with ``shard`` and ``label_index`` columns.
    Shards are filled in place through memory maps, so memory holds one chunk, not the split.
    """
    channels = COLOR_MODES.get(color_mode)
    if channels is None:
        raise PipelineError(f"preprocess.color_mode must be one of {list(COLOR_MODES)}, got {color_mode!r}")
    chunks = reader.imap(_prepare_ref, reader.refs(rows), workers, folder.name, size=size, color_mode=color_mode)
    write_sharded(folder, "x", rows["shard"], chunks, (size, size, channels))
    labels = [rows["label_index"].to_numpy(dtype=np.int64)]
    write_sharded(folder, "y", rows["shard"], labels, (), dtype=np.int64)


def shard_order(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows sorted by the shard of their content hash (stable: manifest order within a shard)."""
    shards = manifest["sha256"].map(shard_of).astype(np.int64)
    return manifest.assign(shard=shards).sort_values("shard", kind="stable").reset_index(drop=True)


def prepare_images(images: np.ndarray, indices: np.ndarray, size: int, color_mode: str) -> np.ndarray:
    """In-memory version of :func:`write_split`, for arrays (tests, notebooks)."""
    if color_mode not in COLOR_MODES:
        raise PipelineError(f"preprocess.color_mode must be one of {list(COLOR_MODES)}, got {color_mode!r}")
    channels = COLOR_MODES[color_mode]
    out = np.empty((len(indices), size, size, channels), dtype=np.uint8)
    for row, index in enumerate(indices):
        out[row] = prepare(np.asarray(images[index]), size, color_mode)
    return out


def assign_splits(manifest: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> pd.Series:
    """The final split of each row: a stratified, seeded val (and test, when the source has none) carve.

    Fractions are of the whole labelled pool, so ``val_fraction=0.1, test_fraction=0.1`` on a
    source without a test split gives the 80/10/10 the seeds advise. Rows of ``ingest.extra`` stay
    in train, outside the pool and the counts.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise PipelineError(f"preprocess.{name} must be in [0, 1), got {value}")
    splits = manifest["split"].copy()  # "predict" rows (unlabelled) stay as they are
    has_test = (splits == "test").any()
    # ingest.extra's rows only ever train: out of the carves and their counts, so the source's val and
    # test splits are the rows they would be without them (promote compares on the same test images)
    extra = manifest["id"].str.startswith(EXTRA_ID)
    pool = manifest.index[(splits == "train") & ~extra]
    total = int(((splits != "predict") & ~extra).sum()) if has_test else len(pool)
    if not has_test and test_fraction > 0:
        pool, test_rows = _stratified(manifest, pool, test_fraction * total, seed)
        splits[test_rows] = "test"
    if val_fraction > 0:
        pool, val_rows = _stratified(manifest, pool, val_fraction * total, seed + 1)
        splits[val_rows] = "val"
    return splits


def _stratified(manifest: pd.DataFrame, pool: pd.Index, count: float, seed: int) -> tuple[pd.Index, pd.Index]:
    """Carve ``count`` rows out of ``pool``, in proportion to each class, the same rows every time.

    Each class's rows are ranked by a seeded hash of their content and the first ones carved, so
    adding, removing or relabelling a photo moves a few rows between splits (bounded by the number
    of classes, as quotas shift), instead of reshuffling val and test (which would also make runs
    before and after the change incomparable). Class quotas are the largest-remainder rounding of
    the proportional share, each class keeping a row in the pool; when that cannot reach ``count``
    (classes of one or two rows), the rest is carved by the same rank across classes.
    """
    count = max(1, round(count))
    if count >= len(pool):
        raise PipelineError(f"cannot carve {count} rows out of {len(pool)} training rows")
    rows = manifest.loc[pool]
    key = [hashlib.sha256(f"{seed}:{sha}".encode()).hexdigest() for sha in rows["sha256"]]
    ranked = rows.assign(_key=key).sort_values(["label", "_key", "id"], kind="stable")
    sizes = ranked.groupby("label", sort=True).size()
    share = sizes * count / len(pool)
    quota = np.minimum(np.floor(share).astype(int), sizes - 1)
    remainder = (share - quota).sort_values(ascending=False, kind="stable")
    for label in remainder.index:
        if quota.sum() >= count:
            break
        if quota[label] < sizes[label] - 1:
            quota[label] += 1
    rank = ranked.groupby("label", sort=True).cumcount()
    chosen = rank.to_numpy() < ranked["label"].map(quota).to_numpy()
    short = count - int(chosen.sum())
    if short > 0:  # tiny classes could not give their share: carve the rest by rank, across classes
        rest = ranked[~chosen].sort_values(["_key", "id"], kind="stable").index[:short]
        chosen |= ranked.index.isin(rest)
    carved = ranked.index[chosen]
    return pool.difference(carved), pd.Index(sorted(carved))
