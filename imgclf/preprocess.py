"""preprocess: one size, one colour mode, and the train/val/test split.

Output arrays are uint8 (N, H, W, C): the model does its own scaling, so every
consumer (Keras, TFLite, predict) sees the same input contract.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from imgclf.images import ImageError
from imgclf.ingest import IngestedImages, Ref
from imgclf.io import PipelineError, atomic_path

COLOR_MODES = {"grayscale": 1, "rgb": 3}


def to_color_mode(image: np.ndarray, color_mode: str) -> np.ndarray:
    """Convert an (H,W), (H,W,1), (H,W,3) or (H,W,4) uint8 image to (H,W,C) for ``color_mode``."""
    if color_mode not in COLOR_MODES:
        raise PipelineError(f"preprocess.color_mode must be one of {list(COLOR_MODES)}, got {color_mode!r}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    if color_mode == "grayscale":
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return image[:, :, None]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return image


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size; INTER_AREA when shrinking (no aliasing), INTER_LINEAR when growing."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    interpolation = cv2.INTER_AREA if size < min(height, width) else cv2.INTER_LINEAR
    resized = cv2.resize(image, (size, size), interpolation=interpolation)
    return resized[:, :, None] if resized.ndim == 2 else resized


def prepare(image: np.ndarray, size: int, color_mode: str) -> np.ndarray:
    """The model's input for one decoded image: colour mode, then a square resize."""
    return resize(to_color_mode(image, color_mode), size)


def _prepare_ref(reader: IngestedImages, ref: Ref, size: int, color_mode: str) -> np.ndarray:
    try:
        return prepare(reader.image(ref), size, color_mode)
    except ImageError as error:  # validate decoded it; reaching this means the packed data changed
        raise PipelineError(f"image #{ref.index} no longer decodes ({error}): rerun ingest and validate") from error


def write_split(
    reader: IngestedImages, refs: list[Ref], path: Path, size: int, color_mode: str, workers: int | None = None
) -> None:
    """Decode, convert and resize ``refs`` in parallel, streaming into ``path`` (.npy) atomically.

    The output is filled in place through a memory map, so memory holds one chunk, not the split.
    """
    channels = COLOR_MODES.get(color_mode)
    if channels is None:
        raise PipelineError(f"preprocess.color_mode must be one of {list(COLOR_MODES)}, got {color_mode!r}")
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(refs), size, size, channels))
        row = 0
        for chunk in reader.imap(_prepare_ref, refs, workers, path.stem, size=size, color_mode=color_mode):
            out[row : row + len(chunk)] = chunk
            row += len(chunk)
        out.flush()
        del out


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
    source without a test split gives the 80/10/10 the seeds advise.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise PipelineError(f"preprocess.{name} must be in [0, 1), got {value}")
    splits = manifest["split"].copy()  # "predict" rows (unlabelled) stay as they are
    has_test = (splits == "test").any()
    pool = manifest.index[splits == "train"]
    total = int((splits != "predict").sum()) if has_test else len(pool)
    if not has_test and test_fraction > 0:
        pool, test_rows = _stratified(manifest, pool, test_fraction * total, seed)
        splits[test_rows] = "test"
    if val_fraction > 0:
        pool, val_rows = _stratified(manifest, pool, val_fraction * total, seed + 1)
        splits[val_rows] = "val"
    return splits


def _stratified(manifest: pd.DataFrame, pool: pd.Index, count: float, seed: int) -> tuple[pd.Index, pd.Index]:
    count = max(1, round(count))
    labels = manifest.loc[pool, "label"]
    if count >= len(pool):
        raise PipelineError(f"cannot carve {count} rows out of {len(pool)} training rows")
    classes = labels.nunique()
    stratify = labels if labels.value_counts().min() >= 2 and classes <= count <= len(pool) - classes else None
    keep, carved = train_test_split(pool, test_size=count, random_state=seed, stratify=stratify)
    return pd.Index(sorted(keep)), pd.Index(sorted(carved))
