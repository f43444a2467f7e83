"""Image issues: files that decode fine and still make poor training data.

validate quarantines what is broken (unreadable, bombs, duplicates, leakage); this measures what is
merely bad, so a person can look: blurred (variance of the Laplacian, Pech-Pacheco et al. 2000),
too dark or too bright (the 99th / 1st percentile of luminance: an image is dark when even its
brightest pixels are), low information (entropy of the luminance histogram: near-uniform frames),
an odd aspect ratio or size for the dataset (against the dataset's median), and near-duplicates
(pHash) that carry different labels. Each check reports the measured value and the threshold it
was held to; the thresholds are ``audit.images`` params. Blur and shape are judged against the
dataset's own median, so a folder of 28 px scans and one of 12-megapixel photos need no retuning.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd

from imgclf.data import images as image_files
from imgclf.io import PipelineError

COLUMNS = ["row", "issue", "value", "threshold"]
ISSUES = (
    "blurred",
    "too_dark",
    "too_bright",
    "low_information",
    "odd_aspect_ratio",
    "odd_size",
    "conflicting_duplicate",
)
INSPECT_SIDE = 256  # blur is measured at this longest side at most, so it does not depend on the camera


def luminance(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 luminance of a grayscale or RGB image."""
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[:, :, 0]
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def image_stats(image: np.ndarray, phash: bool = True) -> dict:
    """The measured statistics of one decoded image (uint8, (H, W) or (H, W, C)); ``phash``: also its
    perceptual hash (validate's manifest already holds it when its near-duplicate rule is on)."""
    gray = luminance(np.asarray(image))
    height, width = gray.shape
    scale = INSPECT_SIDE / max(height, width)
    small = (
        cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
        if scale < 1
        else gray
    )
    histogram = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    share = histogram[histogram > 0] / gray.size
    low, high = np.percentile(gray, [1, 99])
    return {
        "width": int(width),
        "height": int(height),
        "sharpness": float(cv2.Laplacian(small, cv2.CV_64F).var()),
        "dark_score": float(high),  # the brightest 1 %: low means the whole frame is dark
        "bright_score": float(low),  # the darkest 1 %: high means the whole frame is washed out
        "entropy": float(-(share * np.log2(share)).sum()),
        "phash": f"{image_files.perceptual_hash(image):016x}" if phash else "",
    }


def find_image_issues(stats: pd.DataFrame, labels: pd.Series, params: dict) -> pd.DataFrame:
    """One row per (image, issue) found: ``row`` is the position in ``stats``; ``value`` what was
    measured, ``threshold`` what it was held to (both in the check's own unit)."""
    found = []

    def flag(mask, issue, values, threshold):
        for row in np.flatnonzero(np.asarray(mask)):
            found.append((int(row), issue, round(float(np.asarray(values)[row]), 4), round(float(threshold), 4)))

    if len(stats) == 0:
        return pd.DataFrame({"row": [], "issue": [], "value": [], "threshold": []}).astype({"row": np.int64})
    blur_limit = float(np.median(stats["sharpness"])) * float(params["blur_below_median"])
    flag(stats["sharpness"] < blur_limit, "blurred", stats["sharpness"], blur_limit)
    flag(stats["dark_score"] < params["dark_below"], "too_dark", stats["dark_score"], params["dark_below"])
    flag(stats["bright_score"] > params["bright_above"], "too_bright", stats["bright_score"], params["bright_above"])
    flag(
        stats["entropy"] < params["low_information_below"],
        "low_information",
        stats["entropy"],
        params["low_information_below"],
    )
    # shape against the dataset's median, as a factor either way (2 = twice as wide, or half)
    aspect = np.log(stats["width"] / stats["height"])
    aspect_off = np.exp(np.abs(aspect - np.median(aspect)))
    flag(aspect_off > params["aspect_ratio_factor"], "odd_aspect_ratio", aspect_off, params["aspect_ratio_factor"])
    pixels = np.log(stats["width"] * stats["height"])
    size_off = np.exp(np.abs(pixels - np.median(pixels)))
    flag(size_off > params["size_factor"], "odd_size", size_off, params["size_factor"])
    for row, distance in conflicting_duplicates(stats["phash"], labels, int(params["duplicate_distance"])):
        found.append((row, "conflicting_duplicate", float(distance), float(params["duplicate_distance"])))
    table = pd.DataFrame(found, columns=COLUMNS).astype({"row": np.int64, "value": float, "threshold": float})
    return table.sort_values(["row", "issue"], kind="mergesort").reset_index(drop=True)


def conflicting_duplicates(phashes: pd.Series, labels: pd.Series, max_distance: int) -> list[tuple[int, int]]:
    """Labelled rows whose pHash is within ``max_distance`` bits of a row with another label: (row,
    distance), each row once with its nearest conflicting distance. An empty label (an unlabelled
    image) conflicts with nothing."""
    labels = np.asarray(labels, dtype=object)
    rows = np.flatnonzero(labels != "")
    hashes = np.array([int(phashes.iloc[r], 16) for r in rows], dtype=np.uint64)
    nearest: dict[int, int] = {}
    if max_distance == 0:  # exact pHash: group instead of comparing all pairs
        frame = pd.DataFrame({"hash": hashes, "label": labels[rows], "row": rows})
        for _, group in frame.groupby("hash"):
            if group["label"].nunique() > 1:
                nearest.update({int(row): 0 for row in group["row"]})
    else:
        for a, b, distance in image_files.hamming_within(hashes, hashes, max_distance):
            if a != b and labels[rows[a]] != labels[rows[b]]:
                nearest[int(rows[a])] = min(nearest.get(int(rows[a]), math.inf), distance)
    return sorted(nearest.items())


def measure(reader, ref, phash: bool = True) -> dict:
    """:func:`image_stats` of one ingested image (``IngestedImages.map`` runs it in worker processes)."""
    try:
        return image_stats(reader.image(ref), phash)
    except image_files.ImageError as error:  # validate kept it, so the packed bytes changed since
        raise PipelineError(f"image #{ref.index} no longer decodes ({error}): rerun ingest and validate") from error
