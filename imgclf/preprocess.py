"""preprocess: one size, one colour mode, and the train/val/test split.

Output arrays are uint8 (N, H, W, C): the model does its own scaling, so every
consumer (Keras, TFLite, predict) sees the same input contract.
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from imgclf.io import PipelineError

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


def prepare_images(images: np.ndarray, indices: np.ndarray, size: int, color_mode: str) -> np.ndarray:
    channels = COLOR_MODES.get(color_mode)
    if channels is None:
        raise PipelineError(f"preprocess.color_mode must be one of {list(COLOR_MODES)}, got {color_mode!r}")
    out = np.empty((len(indices), size, size, channels), dtype=np.uint8)
    for row, index in enumerate(indices):
        out[row] = resize(to_color_mode(np.asarray(images[index]), color_mode), size)
    return out


def assign_splits(manifest: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> pd.Series:
    """The final split of each row: a stratified, seeded val (and test, when the source has none) carve.

    Fractions are of the whole labelled pool, so ``val_fraction=0.1, test_fraction=0.1`` on a
    source without a test split gives the 80/10/10 the seeds advise.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise PipelineError(f"preprocess.{name} must be in [0, 1), got {value}")
    splits = manifest["split"].copy()
    has_test = (splits == "test").any()
    pool = manifest.index[splits == "train"]
    total = len(manifest) if has_test else len(pool)
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
