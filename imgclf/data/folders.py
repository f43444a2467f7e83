"""Folder datasets: list every image a user's folder holds, then pack the files' bytes into shards.

Two layouts, detected from what is on disk (docs/own-images.md):

- **CSV**: ``train/`` holding a CSV of image names and labels (images beside it or in
  ``train/images/``), optionally ``test/`` holding a CSV of names. A test CSV without labels
  becomes the ``predict`` split (predicted, not scored); with labels, the ``test`` split.
- **class folders**: one subfolder per class (the ``image_dataset_from_directory`` convention),
  optionally under ``train/`` and ``test/``. Loose files in ``test/`` are the ``predict`` split.

Listing never opens an image and never follows a path out of the folder: names that leave it,
or name nothing, become rows with a ``problem`` that validate turns into quarantine entries, so
every CSV row and every file is accounted for. Packing streams files through a thread pool
(reading and sha256 release the GIL) that reads at most 64 files and 64 MB ahead of the writer,
so memory stays bounded whatever the number of files. Packed bytes go to shards chosen by
each file's sha256 (:mod:`imgclf.data.shards`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from tqdm import tqdm

from imgclf.data.images import resolve_inside
from imgclf.data.shards import remove_stale, shard_of, shard_path
from imgclf.io import PipelineError, atomic_path
from imgclf.parallel import usable_cpus

log = logging.getLogger(__name__)

NAME_COLUMNS = ("image", "filename", "file", "image_name", "image_id", "name", "id", "path")
LABEL_COLUMNS = ("label", "class", "category", "target", "class_name", "y")
LISTING_COLUMNS = ["id", "name", "label", "split", "source", "path", "problem_rule", "problem"]
PACK_AHEAD = 64  # files read ahead of the writer...
AHEAD_MB = 64  # ...and at most this many MB of them


@dataclass
class Listing:
    """Every row a folder dataset holds, before any file is read."""

    rows: pd.DataFrame  # LISTING_COLUMNS; ``path`` is "" for rows with a problem
    class_names: list[str]
    layout: str
    skipped: list[str] = field(default_factory=list)  # hidden files, never images


def detect_layout(folder: Path) -> str:
    """``csv`` when ``train/`` (or the folder itself) holds a CSV, else ``class_folders``."""
    if not folder.is_dir():
        raise PipelineError(f"ingest.source={str(folder)!r} is not a folder (nor 'fashion-mnist')")
    train = folder / "train"
    if (train.is_dir() and any(train.glob("*.csv"))) or any(folder.glob("*.csv")):
        return "csv"
    return "class_folders"


def list_folder(folder: str | Path, params: dict) -> Listing:
    # Resolved once: sources are relative to the real folder, however the user's path reached it,
    # so the manifest is the same bytes on every machine that mounts the data somewhere else.
    layout = detect_layout(Path(folder).expanduser())  # errors name the path as the user wrote it
    folder = Path(folder).expanduser().resolve()
    listing = _list_csv(folder, params) if layout == "csv" else _list_class_folders(folder, params)
    listing.rows = _limit(listing.rows, params["limit"])
    return listing


# --- the CSV layout ------------------------------------------------------------------------------


def _find_csv(directory: Path, configured: str | None, role: str) -> Path:
    if configured:
        path = directory / configured
        if not path.is_file():
            raise PipelineError(f"ingest.csv.{role}_file={configured!r}: {path} not found")
        return path
    csvs = sorted(directory.glob("*.csv"))
    if len(csvs) > 1:
        raise PipelineError(
            f"{directory} holds {len(csvs)} CSV files ({', '.join(c.name for c in csvs)}); "
            f"set ingest.csv.{role}_file to the one to use"
        )
    return csvs[0]


def read_table(path: Path) -> pd.DataFrame:
    """A CSV as strings (no NaN), header names stripped; unreadable or empty files are one-line errors."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as error:
        raise PipelineError(f"{path} is empty") from error
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path} is not a readable UTF-8 CSV: {str(error).splitlines()[0]}") from error
    table.columns = [str(column).strip() for column in table.columns]
    return table


def find_column(table: pd.DataFrame, configured: str | None, candidates: tuple[str, ...]) -> str | None:
    """``configured`` if the table has it, else the first of ``candidates`` present (case-insensitive)."""
    if configured:
        return configured if configured in table.columns else None
    by_lower = {column.lower(): column for column in table.columns}
    return next((by_lower[name] for name in candidates if name in by_lower), None)


def _csv_rows(folder: Path, csv_path: Path, split: str, params: dict, require_label: bool) -> pd.DataFrame:
    table = read_table(csv_path)
    settings = params["csv"]
    image_column = find_column(table, settings["image_column"], NAME_COLUMNS)
    if image_column is None:
        raise PipelineError(
            f"{csv_path} has no column of image names (looked for "
            f"{settings.get('image_column') or ', '.join(NAME_COLUMNS)}; columns are {', '.join(table.columns)}); "
            "set ingest.csv.image_column"
        )
    label_column = find_column(table, settings["label_column"], LABEL_COLUMNS)
    if label_column is None and require_label:
        raise PipelineError(
            f"{csv_path} has no label column (looked for "
            f"{settings.get('label_column') or ', '.join(LABEL_COLUMNS)}; columns are {', '.join(table.columns)}); "
            "set ingest.csv.label_column"
        )
    labels = table[label_column].str.strip() if label_column else pd.Series([""] * len(table))
    role = split  # ids name the folder the row came from
    if not require_label and not labels.str.len().any():
        split = "predict"  # a test CSV without labels: images to predict, not to score
    rows = []
    for name, label in zip(table[image_column].str.strip(), labels, strict=True):
        path, rule, reason = resolve_inside(csv_path.parent, name, root=folder)
        rows.append(_row(folder, split, name, label, path, rule, reason, id_=f"{role}/{name}"))
    return pd.DataFrame(rows, columns=LISTING_COLUMNS)


def _inside_or_fail(folder: Path, directory: Path) -> Path:
    if not directory.resolve().is_relative_to(folder):
        raise PipelineError(f"{directory} is a link to {directory.resolve()}, outside the dataset folder {folder}")
    return directory


def _list_csv(folder: Path, params: dict) -> Listing:
    settings = params["csv"]
    train_dir = folder / "train" if (folder / "train").is_dir() and any((folder / "train").glob("*.csv")) else folder
    _inside_or_fail(folder, train_dir)
    frames = [_csv_rows(folder, _find_csv(train_dir, settings["train_file"], "train"), "train", params, True)]
    test_dir = folder / "test"
    if test_dir.is_dir() and any(test_dir.glob("*.csv")):
        _inside_or_fail(folder, test_dir)
        frames.append(_csv_rows(folder, _find_csv(test_dir, settings["test_file"], "test"), "test", params, False))
    rows = pd.concat(frames, ignore_index=True)
    labelled = rows.loc[(rows["split"] == "train") & (rows["label"] != ""), "label"]
    class_names = _class_names(params, sorted(labelled.unique()))
    return Listing(_unique_ids(rows), class_names, "csv")


# --- the class-folder layout ---------------------------------------------------------------------


def _list_class_folders(folder: Path, params: dict) -> Listing:
    has_splits = (folder / "train").is_dir() and any(_subfolders(folder / "train"))
    roots = {"train": folder / "train", "test": folder / "test"} if has_splits else {"train": folder}
    found = [path.name for path in _subfolders(roots["train"])]
    if not found:
        raise PipelineError(f"{roots['train']} has no class subfolders and no CSV: see docs/own-images.md")
    rows, skipped = [], []
    if has_splits:  # anything beside train/ and test/ is not part of the dataset: say so
        skipped += [_relative(folder, p) for p in sorted(folder.iterdir()) if p.name not in roots]
    for split, root in roots.items():
        if not root.is_dir():
            continue
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.name.startswith("."):
                skipped.append(_relative(folder, Path(entry.path)))
            elif entry.is_dir(follow_symlinks=False):
                files, hidden = _walk(folder, Path(entry.path))
                rows += [_file_row(folder, split, entry.name, path) for path in files]
                skipped += hidden
            else:  # a file beside the class folders: unlabelled
                rows.append(_file_row(folder, "predict" if split == "test" else split, "", Path(entry.path)))
    frame = pd.DataFrame(rows, columns=LISTING_COLUMNS)
    if skipped:
        log.warning(
            "skipped %d hidden or out-of-layout path(s), e.g. %s (listed in meta.json)", len(skipped), skipped[0]
        )
    return Listing(_unique_ids(frame), _class_names(params, sorted(found)), "class_folders", skipped)


def _subfolders(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))


def _walk(folder: Path, directory: Path) -> tuple[list[Path], list[str]]:
    """Files under ``directory`` in a stable order; symlinked folders are listed, not entered."""
    files, hidden = [], []
    for current, dirs, names in os.walk(directory, followlinks=False):
        hidden += [_relative(folder, Path(current) / d) + "/" for d in dirs if d.startswith(".")]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names) + [d for d in dirs if (Path(current) / d).is_symlink()]:
            path = Path(current) / name
            if name.startswith("."):
                hidden.append(_relative(folder, path))
            else:
                files.append(path)
    return sorted(files), hidden


def _file_row(folder: Path, split: str, label: str, path: Path) -> dict:
    name = _relative(folder, path)
    resolved, rule, reason = resolve_inside(folder, name, search=("",))
    return _row(folder, split, name, label, resolved, rule, reason, id_=name)


# --- shared --------------------------------------------------------------------------------------


def _relative(folder: Path, path: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()


def _row(
    folder: Path, split: str, name: str, label: str, path: Path | None, rule: str, reason: str, id_: str = ""
) -> dict:
    return {
        "id": id_ or f"{split}/{name}",
        "name": name,  # as the user wrote it (CSV cell, or path in the folder): predictions use it
        "label": label,
        "split": split,
        "source": _relative(folder, path) if path else name,
        "path": str(path) if path else "",
        "problem_rule": rule,  # a validate rule, for rows that cannot be read at all
        "problem": reason,
    }


def _unique_ids(rows: pd.DataFrame) -> pd.DataFrame:
    """A name listed twice keeps its id the first time and gets ``#2``, ``#3``... after (never reused)."""
    seen: Counter[str] = Counter()
    taken = set(rows["id"])
    ids = []
    for id_ in rows["id"]:
        seen[id_] += 1
        if seen[id_] == 1:
            ids.append(id_)
            continue
        n = seen[id_]
        while f"{id_}#{n}" in taken:
            n += 1
        seen[id_] = n
        taken.add(f"{id_}#{n}")
        ids.append(f"{id_}#{n}")
    return rows.assign(id=ids)


def folder_name(label: str) -> str:
    """A class name as a folder name: path separators become ``_`` (``T-shirt/top`` -> ``T-shirt_top``),
    a leading dot goes (hidden folders are not listed). :func:`match_class` maps it back."""
    name = re.sub(r"[/\\]", "_", label).strip().lstrip(".")
    return name or "_"


def _loose(name: str) -> str:
    return re.sub(r"[\W_]+", "", name.casefold())


def match_class(folder: str, class_names: list[str]) -> str | None:
    """The class a folder name means: the same name, else the one class equal to it ignoring case,
    spaces and punctuation (``ankle_boot`` is ``Ankle boot``); None when none or several are."""
    if folder in class_names:
        return folder
    matches = [name for name in class_names if _loose(name) == _loose(folder)]
    return matches[0] if len(matches) == 1 else None


def _class_names(params: dict, found: list[str]) -> list[str]:
    configured = params["classes"]
    if configured:
        return [str(name) for name in configured]
    if not found:
        raise PipelineError("no labelled training images found: see docs/own-images.md")
    return found


def _limit(rows: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    if limit is None:
        return rows
    if int(limit) < 1:
        raise PipelineError(f"ingest.limit must be a positive integer or null, got {limit}")
    keep = rows.groupby(["split", "label"], sort=False).cumcount() < int(limit)
    return rows[keep].reset_index(drop=True)


# --- packing -------------------------------------------------------------------------------------


def _read(path: str, max_bytes: int) -> tuple[bytes | None, str, int, str]:
    """(data, sha256, size, problem): the file's bytes unless it cannot or should not be read."""
    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            return None, "", size, f"{size / 2**20:.1f} MB, over ingest.max_pack_mb; not packed"
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        return None, "", 0, f"cannot read file: {error.strerror or error}"
    return data, hashlib.sha256(data).hexdigest(), len(data), ""


def _read_ahead(
    pool: ThreadPoolExecutor, paths: list[tuple[int, str]], max_bytes: int
) -> Iterator[tuple[int, tuple[bytes | None, str, int, str]]]:
    """``(i, _read(path))`` in listing order, the pool reading ahead by at most ``PACK_AHEAD`` files
    and ``AHEAD_MB``: a sliding window, so no worker waits for a chunk's slowest file."""
    pending: deque[tuple[int, Future, int]] = deque()
    in_flight = 0
    for i, path in paths:
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0  # _read reports it
        size = size if size <= max_bytes else 0  # not read at all
        while pending and (len(pending) >= PACK_AHEAD or in_flight + size > AHEAD_MB * 2**20):
            j, future, held = pending.popleft()
            in_flight -= held
            yield j, future.result()
        pending.append((i, pool.submit(_read, path, max_bytes), size))
        in_flight += size
    while pending:
        j, future, _ = pending.popleft()
        yield j, future.result()


def pack(listing: Listing, shard_folder: Path, max_pack_mb: float, workers: int | None) -> pd.DataFrame:
    """Stream every listed file into ``images-SS.bin`` shards; return the manifest (shard, offset, size).

    A file's shard comes from its sha256 (:func:`imgclf.data.shards.shard_of`), so a new or edited photo
    rewrites one shard, not the dataset. Within a shard, files follow the listing order, so the
    bytes are the same for any number of workers. A thread pool reads at most ``PACK_AHEAD`` files
    and ``AHEAD_MB`` ahead of the writer (or one file up to ``max_pack_mb``): that bounds memory.
    """
    rows = listing.rows.reset_index(drop=True)
    max_bytes = int(float(max_pack_mb) * 2**20)
    shard_ids = np.full(len(rows), -1, dtype=np.int64)
    offsets = np.zeros(len(rows), dtype=np.int64)
    sizes = np.zeros(len(rows), dtype=np.int64)
    file_bytes = np.zeros(len(rows), dtype=np.int64)
    hashes = [""] * len(rows)
    rules, problems = rows["problem_rule"].tolist(), rows["problem"].tolist()
    readable = [(i, path) for i, path in enumerate(rows["path"]) if path]
    positions: dict[int, int] = {}
    outputs: dict[int, BinaryIO] = {}
    with (
        contextlib.ExitStack() as shards,
        ThreadPoolExecutor(max_workers=workers or usable_cpus()) as pool,
        tqdm(total=len(rows), desc="pack", unit="img", disable=None) as bar,
    ):
        bar.update(len(rows) - len(readable))
        for i, (data, sha, size, problem) in _read_ahead(pool, readable, max_bytes):
            file_bytes[i] = size
            if problem:
                rules[i], problems[i] = ("file_size" if data is None and size else "readable"), problem
            else:
                shard = shard_of(sha)
                if shard not in outputs:
                    tmp = shards.enter_context(atomic_path(shard_path(shard_folder, "images", shard, ".bin")))
                    outputs[shard] = shards.enter_context(open(tmp, "wb"))
                    positions[shard] = 0
                outputs[shard].write(data)
                shard_ids[i], offsets[i], sizes[i], hashes[i] = shard, positions[shard], len(data), sha
                positions[shard] += len(data)
            bar.update(1)
    remove_stale(shard_folder, "images", [shard_path(shard_folder, "images", s, ".bin") for s in outputs], ".bin")
    return pd.DataFrame(
        {
            "id": rows["id"],
            "name": rows["name"],
            "label": rows["label"],
            "split": rows["split"],
            "source": rows["source"],
            "sha256": hashes,
            "index": np.arange(len(rows)),
            "shard": shard_ids,
            "offset": offsets,
            "nbytes": sizes,
            "file_bytes": file_bytes,
            "problem_rule": rules,
            "problem": problems,
        }
    )
