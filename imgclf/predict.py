"""predict: run an exported .tflite model on images nobody has labelled.

Inputs: a folder of images, a folder holding a CSV of image names (the seed layout's test
folder, images beside the CSV or in an ``images/`` subfolder), a CSV file, or single files.
Every input gets a row: its prediction, or an error saying why it could not be read.
Images go through the same resize and colour conversion as training, from the model card.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from imgclf.io import PipelineError
from imgclf.preprocess import resize, to_color_mode

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
NAME_COLUMNS = ("image", "filename", "file", "image_name", "name", "id", "path")


@dataclass
class Item:
    name: str  # as the user gave it (CSV cell or path)
    path: Path | None  # None when the name is unsafe
    error: str | None = None


def _inside(folder: Path, name: str) -> Item:
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        return Item(name, None, "path leaves the dataset folder")
    for base in (folder, folder / "images"):
        candidate = base / name
        if candidate.exists():
            resolved = candidate.resolve()
            if not resolved.is_relative_to(folder.resolve()):
                return Item(name, None, "path leaves the dataset folder (symlink)")
            return Item(name, resolved)
    return Item(name, None, "file not found")


def _from_csv(csv_path: Path, column: str | None) -> list[Item]:
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise PipelineError(f"{csv_path}: not a readable CSV ({error})") from error
    if column is None:
        column = next((c for c in table.columns if c.strip().lower() in NAME_COLUMNS), None)
        if column is None:
            raise PipelineError(
                f"{csv_path}: no column of image names (looked for {', '.join(NAME_COLUMNS)}); set predict.csv_column"
            )
    elif column not in table.columns:
        raise PipelineError(f"{csv_path}: no column {column!r}; columns are {', '.join(table.columns)}")
    return [_inside(csv_path.parent, name.strip()) for name in table[column]]


def collect(inputs: list[str | Path], csv_column: str | None = None) -> list[Item]:
    """The images to predict, in a stable order, from folders, CSV files and image files."""
    items: list[Item] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            csvs = sorted(path.glob("*.csv"))
            if csvs:
                items += _from_csv(csvs[0], csv_column)
            else:
                files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                items += [Item(str(p.relative_to(path)), p) for p in files]
        elif path.suffix.lower() == ".csv":
            items += _from_csv(path, csv_column)
        elif path.is_file():
            items.append(Item(str(given), path))
        else:
            items.append(Item(str(given), None, "file not found"))
    return items


def read_image(path: Path) -> np.ndarray:
    """Decode with OpenCV (content, not extension, decides; EXIF orientation applied) to uint8 RGB."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ValueError("empty file")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def prepare(path: Path, image_size: int, color_mode: str) -> np.ndarray:
    return resize(to_color_mode(read_image(path), color_mode), image_size)


def predict(
    classifier, items: list[Item], labels: list[str], image_size: int, color_mode: str, top_k: int = 3
) -> pd.DataFrame:
    """One row per item: the top-k labels and probabilities, or an error."""
    top_k = min(top_k, len(labels))
    rows, images, positions = [], [], []
    for item in items:
        row = {"image": item.name, "predicted_label": "", "probability": np.nan, "error": item.error or ""}
        if item.path is not None and not item.error:
            try:
                images.append(prepare(item.path, image_size, color_mode))
                positions.append(len(rows))
            except (ValueError, cv2.error) as error:
                row["error"] = f"cannot read image: {error}"
        rows.append(row)
    if images:
        proba = classifier.predict(np.stack(images))
        for position, p in zip(positions, proba, strict=True):
            best = np.argsort(-p, kind="stable")[:top_k]
            rows[position]["predicted_label"] = labels[best[0]]
            rows[position]["probability"] = round(float(p[best[0]]), 6)
            for rank, index in enumerate(best, start=1):
                rows[position][f"top{rank}_label"] = labels[index]
                rows[position][f"top{rank}_probability"] = round(float(p[index]), 6)
    columns = ["image", "predicted_label", "probability"]
    columns += [f"top{r}_{k}" for r in range(1, top_k + 1) for k in ("label", "probability")] + ["error"]
    return pd.DataFrame(rows).reindex(columns=columns)
