"""ingest: read a source dataset into one packed array plus a manifest.

Fashion-MNIST comes as four IDX files. We look for them, in order, in the folder
set by ``ingest.fashion_mnist_dir``, in the Debian package's folder, in Keras'
download cache, and finally download them the way ``keras.datasets`` does. The
images are packed into ``images.npy`` (DVC hashes one file, not 70,000) and every
row gets a manifest entry with the sha256 of its pixels, which validate uses to
find duplicates and leakage.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from imgclf.io import PipelineError, write_csv, write_json, write_npy
from imgclf.paths import Layout

log = logging.getLogger(__name__)

# Label order documented at https://github.com/zalandoresearch/fashion-mnist#labels
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_COUNTS = {"train": 60000, "test": 10000}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
KERAS_CACHE_DIR = Path.home() / ".keras" / "datasets" / "fashion-mnist"
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
MANIFEST_COLUMNS = ["id", "label", "split", "source", "sha256", "index"]

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class Dataset:
    """Images (N,H,W[,C]) uint8 with one manifest row each."""

    images: np.ndarray
    manifest: pd.DataFrame
    class_names: list[str]
    source: str


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file (optionally gzipped), checking its magic number and declared size."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:
        raise PipelineError(f"cannot read IDX file {path}: {error}") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise PipelineError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise PipelineError(f"{path}: expected {expected_ndim} dimensions, the header says {ndim}")
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise PipelineError(f"{path}: truncated header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected_bytes = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header_end != expected_bytes:
        raise PipelineError(
            f"{path}: header declares shape {shape} ({expected_bytes} bytes) "
            f"but the file holds {len(data) - header_end} bytes of data"
        )
    return np.frombuffer(data, dtype=dtype, offset=header_end).reshape(shape)


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _complete(folder: Path) -> bool:
    return all(_find_file(folder, name) for name in FASHION_MNIST_FILES.values())


def _download(target: Path) -> Path:
    """Fetch the four files as keras.datasets.fashion_mnist does (same origin and cache)."""
    import keras

    try:
        for name in FASHION_MNIST_FILES.values():
            keras.utils.get_file(
                f"{name}.gz",
                origin=KERAS_ORIGIN + f"{name}.gz",
                cache_dir=str(target.parent),
                cache_subdir=target.name,
            )
    except Exception as error:  # network errors come in many types
        raise PipelineError(
            "Fashion-MNIST not found and the download failed "
            f"({type(error).__name__}). Install it with "
            "'apt-get install dataset-fashion-mnist', or set ingest.fashion_mnist_dir in params.yaml "
            "to a folder holding the four IDX files, or go online once so Keras can download it."
        ) from error
    if not _complete(target):
        raise PipelineError(f"the Fashion-MNIST download to {target} is incomplete; delete the folder and retry")
    return target


def find_fashion_mnist(configured: str | None = None, download: bool = True) -> Path:
    """The folder holding the four Fashion-MNIST IDX files (see module docstring for the order)."""
    if configured:
        folder = Path(configured).expanduser()
        if not _complete(folder):
            raise PipelineError(
                f"ingest.fashion_mnist_dir={configured} does not hold the four Fashion-MNIST IDX files "
                f"({', '.join(FASHION_MNIST_FILES.values())}, optionally .gz)"
            )
        return folder
    for folder in (SYSTEM_DIR, KERAS_CACHE_DIR):
        if _complete(folder):
            return folder
    if not download:
        raise PipelineError("Fashion-MNIST not found (download disabled)")
    return _download(KERAS_CACHE_DIR)


def limit_per_class(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of the first ``limit`` rows of each class, in their original order."""
    if limit is None:
        return np.arange(len(labels))
    if int(limit) < 1:
        raise PipelineError(f"ingest.limit must be a positive integer or null, got {limit}")
    keep = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        keep[np.flatnonzero(labels == label)[: int(limit)]] = True
    return np.flatnonzero(keep)


def pixel_sha256(images: np.ndarray) -> list[str]:
    return [hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images]


def load_fashion_mnist(folder: Path, limit: int | None = None) -> Dataset:
    parts, frames = [], []
    offset = 0
    for split in ("train", "test"):
        images = read_idx(_find_file(folder, FASHION_MNIST_FILES[(split, "images")]), expected_ndim=3)
        labels = read_idx(_find_file(folder, FASHION_MNIST_FILES[(split, "labels")]), expected_ndim=1)
        if len(images) != len(labels):
            raise PipelineError(f"{folder}: {split} has {len(images)} images but {len(labels)} labels")
        if len(images) != FASHION_MNIST_COUNTS[split]:
            log.warning(
                "%s split has %d images, Fashion-MNIST has %d",
                split,
                len(images),
                FASHION_MNIST_COUNTS[split],
            )
        if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
            raise PipelineError(f"{folder}: {split} labels outside 0..{len(FASHION_MNIST_CLASSES) - 1}")
        keep = limit_per_class(labels, limit)
        images, labels = images[keep], labels[keep]
        parts.append(images)
        frames.append(
            pd.DataFrame(
                {
                    "id": [f"{split}/{i:05d}" for i in keep],
                    "label": [FASHION_MNIST_CLASSES[label] for label in labels],
                    "split": split,
                    "source": [f"{FASHION_MNIST_FILES[(split, 'images')]}#{i}" for i in keep],
                    "sha256": pixel_sha256(images),
                    "index": np.arange(offset, offset + len(images)),
                }
            )
        )
        offset += len(images)
    return Dataset(
        np.concatenate(parts),
        pd.concat(frames, ignore_index=True),
        list(FASHION_MNIST_CLASSES),
        "fashion-mnist",
    )


def load_source(params: dict) -> Dataset:
    """The dataset named by ``ingest.source``."""
    source = params.get("source", "fashion-mnist")
    if source == "fashion-mnist":
        folder = find_fashion_mnist(params.get("fashion_mnist_dir"))
        log.info("reading Fashion-MNIST from %s", folder)
        return load_fashion_mnist(folder, params.get("limit"))
    raise PipelineError(
        f"ingest.source={source!r} is not supported yet: use 'fashion-mnist' (folder datasets are planned)"
    )


def write_ingested(layout: Layout, dataset: Dataset) -> None:
    counts = dataset.manifest.groupby(["split", "label"]).size()
    meta = {
        "format": "array",
        "source": dataset.source,
        "class_names": dataset.class_names,
        "image_shape": list(dataset.images.shape[1:]),
        "rows": len(dataset.manifest),
        "counts": {split: {label: int(n) for label, n in counts[split].items()} for split in counts.index.levels[0]},
    }
    write_npy(layout.ingested_images, dataset.images)
    write_csv(layout.ingested_manifest, dataset.manifest[MANIFEST_COLUMNS])
    write_json(layout.ingested_meta, meta)


def read_manifest(path: Path) -> pd.DataFrame:
    return pd.read_csv(
        path,
        dtype={"id": str, "label": str, "split": str, "source": str, "sha256": str},
        keep_default_na=False,
    )


def read_ingested(layout: Layout) -> tuple[np.ndarray, pd.DataFrame, dict]:
    from imgclf.io import read_json, read_npy

    if not layout.ingested_manifest.exists():
        raise PipelineError(f"{layout.ingested_manifest} not found: run the ingest stage first")
    return (
        read_npy(layout.ingested_images),
        read_manifest(layout.ingested_manifest),
        read_json(layout.ingested_meta),
    )
