"""predict: run an exported .tflite model on images nobody has labelled.

Inputs: a folder of images, a folder holding a CSV of image names (the seed layout's test
folder, images beside the CSV or in an ``images/`` subfolder), a CSV file, or single files.
Every input gets a row: its prediction, or an error saying why it could not be read, worded as
validate's quarantine entries are (``rule: reason``).
Images go through the same resize and colour conversion as training, from the model card.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from imgclf.data.folders import NAME_COLUMNS, find_column, read_table
from imgclf.data.images import IMAGE_SUFFIXES, MAX_PIXELS, ImageError, decode, prepare, resolve_inside
from imgclf.data.ingest import read_manifest
from imgclf.data.shards import read_split
from imgclf.io import PipelineError
from imgclf.ship.ood import Detector

log = logging.getLogger(__name__)


@dataclass
class Item:
    name: str  # as the user gave it (CSV cell or path)
    path: Path | None  # None when the name is unsafe
    error: str | None = None


def _inside(folder: Path, name: str) -> Item:
    path, rule, reason = resolve_inside(folder, name)
    return Item(name, path, f"{rule}: {reason}" if rule else None)


def _from_csv(csv_path: Path, column: str | None) -> list[Item]:
    table = read_table(csv_path)
    found = find_column(table, column, NAME_COLUMNS)
    if found is None:
        looked_for = column or ", ".join(NAME_COLUMNS)
        raise PipelineError(
            f"{csv_path}: no column of image names (looked for {looked_for}; columns are {', '.join(table.columns)}); "
            "set predict.csv_column"
        )
    return [_inside(csv_path.parent, name.strip()) for name in table[found]]


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
            items.append(Item(str(given), None, f"file_missing: {str(given)!r} not found"))
    return items


def read_image(path: Path) -> np.ndarray:
    """Decode a file exactly as the pipeline does (:func:`imgclf.data.images.decode`) to uint8 RGB."""
    try:
        return decode(path.read_bytes(), max_pixels=MAX_PIXELS)
    except OSError as error:
        raise ImageError(f"cannot read file: {error.strerror or error}") from error


def predict(
    classifier,
    items: list[Item],
    labels: list[str],
    image_size: int,
    color_mode: str,
    top_k: int = 3,
    detector: Detector | None = None,
) -> pd.DataFrame:
    """One row per item: the top-k labels and probabilities, or an error."""
    images, errors = [], []
    for item in items:
        image, error = None, item.error or ""
        if item.path is not None and not error:
            try:
                image = prepare(read_image(item.path), image_size, color_mode)
            except ImageError as problem:
                error = f"readable: {problem}"
        images.append(image)
        errors.append(error)
    return prediction_table(classifier, [item.name for item in items], images, errors, labels, top_k, detector)


def prediction_table(
    classifier,
    names: list[str],
    images: list[np.ndarray | None],
    errors: list[str],
    labels: list[str],
    top_k: int = 3,
    detector: Detector | None = None,
) -> pd.DataFrame:
    """Rows ``image, predicted_label, probability, unknown, unknown_score, top<k>_label,
    top<k>_probability..., error``.

    ``images[i]`` is the model input for ``names[i]``, or None with the reason in ``errors[i]``.
    ``unknown``: the image is unlike the training data (``detector``'s score above its threshold), so
    ``predicted_label`` is only the closest class; empty without a detector.
    """
    top_k = min(top_k, len(labels))
    rows = [
        {"image": name, "predicted_label": "", "probability": np.nan, "error": error}
        for name, error in zip(names, errors, strict=True)
    ]
    positions = [i for i, image in enumerate(images) if image is not None]
    if positions:
        proba, features = classifier.predict_with_features(np.stack([images[i] for i in positions]))
        scores = detector.score(proba, features) if detector is not None else None
        for i, (position, p) in enumerate(zip(positions, proba, strict=True)):
            if scores is not None:
                rows[position]["unknown"] = bool(scores[i] > detector.threshold)
                rows[position]["unknown_score"] = round(float(scores[i]), 6)
            best = np.argsort(-p, kind="stable")[:top_k]
            rows[position]["predicted_label"] = labels[best[0]]
            rows[position]["probability"] = round(float(p[best[0]]), 6)
            for rank, index in enumerate(best, start=1):
                rows[position][f"top{rank}_label"] = labels[index]
                rows[position][f"top{rank}_probability"] = round(float(p[index]), 6)
    columns = ["image", "predicted_label", "probability", "unknown", "unknown_score"]
    columns += [f"top{r}_{k}" for r in range(1, top_k + 1) for k in ("label", "probability")] + ["error"]
    return pd.DataFrame(rows).reindex(columns=columns)


def predict_split(
    classifier, paths, labels: list[str], top_k: int, refuse: str | None = None, detector: Detector | None = None
) -> pd.DataFrame:
    """Every row of the source's predict split, in the source's order: a prediction or why not.

    ``refuse``: the reason there is no prediction for any row (a model not fit to ship); rows
    validate quarantined keep their own reason."""
    source = read_manifest(paths.ingested_manifest)
    source = source[source["split"] == "predict"]
    index = read_manifest(paths.preprocessed_index)
    prepared = index[index["split"] == "predict"].reset_index(drop=True)
    x, _ = read_split(paths, "predict")
    quarantine = read_manifest(paths.quarantine).set_index("id")
    position = {id_: i for i, id_ in enumerate(prepared["id"])}
    images, errors = [], []
    for id_ in source["id"]:
        if id_ in position and refuse:
            images.append(None)
            errors.append(refuse)
        elif id_ in position:
            images.append(np.asarray(x[position[id_]]))
            errors.append("")
        else:
            images.append(None)
            why = quarantine.loc[id_] if id_ in quarantine.index else None
            errors.append(f"{why['rule']}: {why['reason']}" if why is not None else "not kept by validate")
    names = source["name"] if "name" in source else source["id"]
    return prediction_table(classifier, list(names), images, errors, labels, top_k, detector)
