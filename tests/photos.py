"""Generated photo-like images and folder datasets for the own-images tests.

Three classes a small CNN can tell apart (a disc, a square, a triangle) drawn in random colours
over noisy gradient backgrounds, at varied sizes, saved as JPEG and PNG.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CLASSES = ("disc", "square", "triangle")


def photo(label: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An RGB uint8 image of ``label``'s shape."""
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    start, end = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    image = (start + (end - start) * ramp) * np.ones((height, 1, 1), np.float32)
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    edge = min(height, width)
    radius = int(edge * rng.uniform(0.2, 0.35))
    cy, cx = (int(rng.uniform(radius, n - radius)) for n in (height, width))
    if label == "disc":
        cv2.circle(image, (cx, cy), radius, colour, -1)
    elif label == "square":
        cv2.rectangle(image, (cx - radius, cy - radius), (cx + radius, cy + radius), colour, -1)
    else:
        points = np.array([[cx, cy - radius], [cx - radius, cy + radius], [cx + radius, cy + radius]], np.int32)
        cv2.fillPoly(image, [points], colour)
    return image


def save(path: Path, image: np.ndarray, quality: int = 90) -> Path:
    """Write an RGB image (JPEG or PNG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    return path


def random_photo(label: str, rng: np.random.Generator) -> np.ndarray:
    return photo(label, rng, int(rng.integers(72, 160)), int(rng.integers(72, 160)))


def csv_dataset(root: Path, per_class: int, unlabelled: int, seed: int = 0) -> Path:
    """The seed layout: train/labels.csv + train/images/, test/test.csv (names only) + test/images/."""
    rng = np.random.default_rng(seed)
    lines = ["image,label"]
    for i in range(per_class * len(CLASSES)):
        label = CLASSES[i % len(CLASSES)]
        name = f"{i:04d}.{'jpg' if i % 2 else 'png'}"
        save(root / "train" / "images" / name, random_photo(label, rng))
        lines.append(f"{name},{label}")
    (root / "train" / "labels.csv").write_text("\n".join(lines) + "\n")
    names = ["image"]
    for i in range(unlabelled):
        name = f"new_{i:03d}.jpg"
        save(root / "test" / "images" / name, random_photo(CLASSES[i % len(CLASSES)], rng))
        names.append(name)
    if unlabelled:
        (root / "test" / "test.csv").write_text("\n".join(names) + "\n")
    return root


def class_folder_dataset(root: Path, per_class: int, test_per_class: int = 0, seed: int = 0) -> Path:
    """One folder per class; with ``test_per_class``, under train/ and test/."""
    rng = np.random.default_rng(seed)
    splits = {"train": per_class, "test": test_per_class} if test_per_class else {"": per_class}
    for split, count in splits.items():
        for label in CLASSES:
            for i in range(count):
                save(root / split / label / f"{label}_{i:03d}.{'jpg' if i % 2 else 'png'}", random_photo(label, rng))
    return root
