"""ingest: read a source dataset into packed images plus a manifest.

Packed formats, named in ``meta.json``: ``array`` (Fashion-MNIST, one uint8 array in
``images.npy``: a fixed public dataset, never edited), ``bytes`` (folder datasets, the
original files back to back in ``shards/images-SS.bin``, a shard per content hash so a changed
photo rewrites one shard; decoded later by validate and preprocess; see :mod:`imgclf.data.folders`)
and ``mixed``: Fashion-MNIST's array plus the files of ``ingest.extra`` in shards (the first
``array_rows`` manifest indices are the array's). :class:`IngestedImages` reads any of them, so
later stages need not know which.

``ingest.extra`` is a class-folder dataset (``data/raw/feedback``: what
``python -m imgclf.feedback export`` writes) added to the training pool of any source. Its folder
names are matched to the source's classes ignoring case and punctuation (``T-shirt_top`` is
``T-shirt/top``: a class name cannot hold a ``/`` on disk); its images never join the test split,
so promote judges the retrained model on the test images its champion was judged on.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from imgclf.data import folders, images
from imgclf.data.shards import shard_path
from imgclf.io import PipelineError, read_json, read_npy, require, write_csv, write_json, write_npy
from imgclf.parallel import process_pool, usable_cpus
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
MAP_CHUNK = 512
MANIFEST_COLUMNS = ["id", "label", "split", "source", "sha256", "index"]
EXTRA_ID = "extra:"  # the ids (and names) of ingest.extra's rows start with this (no folder's ids do)

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


def ingest(params: dict, paths: Layout) -> dict:
    """Read the dataset named by ``ingest.source`` (plus ``ingest.extra``), write ``data/ingested/``,
    return its meta."""
    source = str(params["source"])
    extra_folder = params["extra"]
    if source == "fashion-mnist":
        folder = find_fashion_mnist(params["fashion_mnist_dir"])
        log.info("reading Fashion-MNIST from %s", folder)
        dataset = load_fashion_mnist(folder, params["limit"])
        write_npy(paths.ingested_images, dataset.images)
        manifest = dataset.manifest[MANIFEST_COLUMNS]
        meta = {"format": "array", "hash": "pixels", "image_shape": list(dataset.images.shape[1:])}
        class_names = dataset.class_names
        if extra_folder:
            extra = extra_listing(extra_folder, class_names, params, paths)
            packed = folders.pack(extra, paths.ingested_shards, params["max_pack_mb"], params["workers"])
            manifest = mixed_manifest(manifest, packed)
            meta = {"format": "mixed", "hash": "pixels (array rows), file bytes (extra rows)",
                    "image_shape": meta["image_shape"], "array_rows": len(dataset.images), "skipped": extra.skipped}  # fmt: skip
    else:
        warn_if_unwatched(Path(source), paths)
        listing = folders.list_folder(source, params)
        log.info("%s layout: %d rows listed in %s", listing.layout, len(listing.rows), source)
        class_names = listing.class_names
        if extra_folder:
            extra = extra_listing(extra_folder, class_names, params, paths)
            listing.rows = pd.concat([listing.rows, extra.rows], ignore_index=True)
            listing.skipped += extra.skipped
        manifest = folders.pack(listing, paths.ingested_shards, params["max_pack_mb"], params["workers"])
        meta = {"format": "bytes", "hash": "file bytes", "layout": listing.layout, "skipped": listing.skipped}
    if extra_folder:
        meta["extra"] = {"folder": str(extra_folder), "rows": len(extra.rows)}
    counts = manifest.groupby(["split", "label"]).size()
    meta |= {
        "source": source,
        "class_names": class_names,
        "rows": len(manifest),
        "counts": {split: {label: int(n) for label, n in counts[split].items()} for split in counts.index.levels[0]},
    }
    write_csv(paths.ingested_manifest, manifest)
    write_json(paths.ingested_meta, meta)
    return meta


def extra_listing(folder: str, class_names: list[str], params: dict, paths: Layout) -> folders.Listing:
    """``ingest.extra``'s class folders as training rows of the source's classes.

    Ids and sources are prefixed (``extra:...``, the folder as configured) so they never collide
    with the source's; a folder matching no class keeps its name as the label, which validate
    quarantines as ``unknown_label`` (counted, never silently dropped).
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise PipelineError(
            f"ingest.extra={folder!r} is not a folder: null, or class folders of extra training images "
            "(python -m imgclf.feedback export writes one)"
        )
    warn_if_unwatched(path, paths, "ingest.extra")
    try:
        listing = folders.list_folder(path, params | {"classes": None})
    except PipelineError as error:
        raise PipelineError(f"ingest.extra: {error}") from None
    if listing.layout != "class_folders" or (listing.rows["split"] != "train").any():
        raise PipelineError(
            f"ingest.extra={folder!r} must hold one folder per class and nothing else (no CSV, no train/ and "
            "test/): its images only join training, so the test split promote compares on stays the same"
        )
    labels = {name: folders.match_class(name, class_names) for name in listing.class_names}
    unmatched = sorted(name for name, label in labels.items() if label is None)
    if unmatched:
        log.warning(
            "ingest.extra: folder(s) %s match no class (%s); validate quarantines their images",
            ", ".join(unmatched),
            ", ".join(class_names),
        )
    rows = listing.rows
    prefix = Path(folder).as_posix().rstrip("/")
    rows = rows.assign(
        id=EXTRA_ID + rows["id"],
        name=EXTRA_ID + rows["name"],
        label=[labels.get(label) or label for label in rows["label"]],
        source=prefix + "/" + rows["source"],
    )
    log.info("ingest.extra: %d training images from %s", len(rows), folder)
    return folders.Listing(rows, class_names, listing.layout, [f"{prefix}/{p}" for p in listing.skipped])


def mixed_manifest(array_rows: pd.DataFrame, packed: pd.DataFrame) -> pd.DataFrame:
    """The array's rows (neutral file columns) then the packed files' rows, indices after the array's."""
    neutral = {"name": array_rows["id"], "shard": -1, "offset": 0, "nbytes": 0, "file_bytes": 0,
               "problem_rule": "", "problem": ""}  # fmt: skip
    array_rows = array_rows.assign(**neutral)
    packed = packed.assign(index=packed["index"] + len(array_rows))
    return pd.concat([array_rows, packed[array_rows.columns]], ignore_index=True)


def warn_if_unwatched(source: Path, paths: Layout, key: str = "ingest.source") -> None:
    """DVC sees changes only under data/raw (ingest's dependency): say so when the photos are elsewhere."""
    if source.resolve().is_relative_to(paths.raw.resolve()):
        return
    log.warning(
        "%s %s is outside data/raw, so DVC does not see its photos change: after adding, removing "
        "or relabelling photos there, run 'dvc repro -f ingest' before 'dvc repro'; or move the folder under "
        "data/raw and 'dvc add' it (docs/own-images.md)",
        key,
        source,
    )


TEXT_COLUMNS = (
    "id",
    "name",
    "label",
    "split",
    "source",
    "sha256",
    "problem_rule",
    "problem",
    "format",
    "mode",
    "phash",
)


def read_manifest(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={column: str for column in TEXT_COLUMNS}, keep_default_na=False)


class Ref(NamedTuple):
    """Where a manifest row's image lives in the packed file (picklable, for worker processes)."""

    index: int
    shard: int = -1
    offset: int = 0
    nbytes: int = 0
    skip: bool = False  # ingest could not pack it (its problem column says why)


_JOB: tuple = ()  # (function, reader, options), set once in each worker process by _start_job


def _start_job(function: Callable, reader: IngestedImages, options: dict) -> None:
    global _JOB
    _JOB = (function, reader, options)


def _run_chunk(refs: list[Ref]) -> list:
    function, reader, options = _JOB
    return [function(reader, ref, **options) for ref in refs]


class IngestedImages:
    """The packed images of ``data/ingested/``, either format, addressed by :class:`Ref`.

    A memory map: worker processes of :meth:`map` reopen it from its path instead of receiving
    a pickled copy of the data (see ``__getstate__``).
    """

    def __init__(self, paths: Layout | None, meta: dict, array: np.ndarray | None = None):
        self._source = (paths, meta) if array is None else None
        self.format = meta["format"]
        if self.format not in ("array", "bytes", "mixed"):
            raise PipelineError(f"{paths.ingested_meta}: unknown format {self.format!r}; rerun ingest")
        # Manifest indices below this are rows of the array, the rest files in shards.
        self._array_rows = {"array": float("inf"), "bytes": 0, "mixed": meta.get("array_rows", 0)}[self.format]
        if array is not None:
            self._array = array
        elif self.format in ("array", "mixed"):
            self._array = read_npy(paths.ingested_images)
        if self.format in ("bytes", "mixed"):
            self._folder = paths.ingested_shards
            self._shards: dict[int, np.memmap] = {}  # opened on first use

    @classmethod
    def from_array(cls, images: np.ndarray) -> IngestedImages:
        """Images already in memory (tests, notebooks)."""
        return cls(None, {"format": "array"}, array=images)

    def __getstate__(self) -> dict:
        # Pickling an np.memmap copies all of its data: send the paths and reopen the map instead.
        if self._source is not None:
            return {"source": self._source}
        return {"source": None, "array": np.asarray(self._array)}

    def __setstate__(self, state: dict) -> None:
        if state["source"] is not None:
            self.__init__(*state["source"])
        else:
            self.__init__(None, {"format": "array"}, array=state["array"])

    def refs(self, manifest: pd.DataFrame) -> list[Ref]:
        if self.format == "array":
            return [Ref(int(i)) for i in manifest["index"]]
        skip = manifest["problem_rule"] != ""
        columns = (manifest["index"], manifest["shard"], manifest["offset"], manifest["nbytes"], skip)
        return [Ref(int(i), int(h), int(o), int(n), bool(s)) for i, h, o, n, s in zip(*columns, strict=True)]

    def map(self, function: Callable, refs: list[Ref], workers: int | None, desc: str, **options) -> list:
        """``[function(self, ref, **options) for ref in refs]`` over worker processes, in order."""
        return [result for chunk in self.imap(function, refs, workers, desc, **options) for result in chunk]

    def imap(self, function: Callable, refs: list[Ref], workers: int | None, desc: str, **options) -> Iterator[list]:
        """Like :meth:`map`, yielding one list of results per chunk of refs, so callers can stream.

        ``function`` must be a module-level function (workers import it by name).
        """
        workers = workers or usable_cpus()
        size = max(1, min(MAP_CHUNK, -(-len(refs) // (4 * workers))))  # small datasets use every worker too
        chunks = [refs[start : start + size] for start in range(0, len(refs), size)]
        with tqdm(total=len(refs), desc=desc, unit="img", disable=None) as bar:
            if workers == 1 or len(chunks) <= 1:
                _start_job(function, self, options)
                try:
                    for chunk in chunks:
                        yield _run_chunk(chunk)
                        bar.update(len(chunk))
                finally:
                    _start_job(None, None, {})
            else:
                with process_pool(workers, _start_job, (function, self, options)) as pool:
                    for chunk, results in zip(chunks, pool.map(_run_chunk, chunks), strict=True):
                        yield results
                        bar.update(len(chunk))

    @property
    def array_shape(self) -> tuple[int, ...]:
        """One array image's shape ((28, 28) for Fashion-MNIST); () without an array."""
        return tuple(self._array.shape[1:]) if hasattr(self, "_array") else ()

    def in_array(self, row) -> bool:
        """Whether a manifest row (or :class:`Ref`) is stored as pixels in the array, not as a file."""
        return int(row.index) < self._array_rows

    def raw(self, row) -> np.ndarray:
        """The stored pixels (array rows) or the file's bytes (packed files) of a manifest row."""
        if self.in_array(row):
            return np.asarray(self._array[int(row.index)])
        if int(row.nbytes) == 0:  # an empty file (validate quarantines it); its shard may be empty too
            return np.zeros(0, np.uint8)
        shard = int(row.shard)
        if shard not in self._shards:
            self._shards[shard] = np.memmap(shard_path(self._folder, "images", shard, ".bin"), np.uint8, mode="r")
        return self._shards[shard][int(row.offset) : int(row.offset) + int(row.nbytes)]

    def image(self, row, max_pixels: int | None = None) -> np.ndarray:
        """The row's pixels: (H, W) grayscale arrays as stored, files decoded to (H, W, 3) RGB."""
        raw = self.raw(row)
        return raw if self.in_array(row) else images.decode(raw.tobytes(), max_pixels)


def read_ingested(paths: Layout) -> tuple[IngestedImages, pd.DataFrame, dict]:
    require(paths.ingested_manifest, "ingest")
    meta = read_json(paths.ingested_meta)
    return IngestedImages(paths, meta), read_manifest(paths.ingested_manifest), meta
