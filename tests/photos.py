"""Generated photo-like images and folder datasets for the own-images tests.

Three classes a small CNN can tell apart (a disc, a square, a triangle) drawn in random colours
over noisy gradient backgrounds, at varied sizes, saved as JPEG and PNG.

And real photographs (:func:`photo_set`): random crops of the pictures bundled with scikit-image,
one picture per class, in the CSV and class-folder layouts, with broken files and unlabelled
images on request (benchmarks/photo_sets.py). Two harder kinds (benchmarks/photo_matrix.py):
:func:`texture_set`, five textures under the ``hard`` variation (wide brightness, contrast, scale,
a colour cast and any rotation, :data:`VARIATIONS`), and :func:`fine_set`, classes that are
fixed regions of one photograph (:data:`REGIONS`), so only detail tells them apart.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
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


# --- real photographs: small datasets cut from scikit-image's bundled pictures ---------------------

# skimage.data pictures that ship inside the scikit-image wheel (no download), one class each:
# colour photographs first, then grayscale ones (converted to RGB). Left out: cat (the same photo
# as chelsea), horse (a binary silhouette), microaneurysms (102 px), logo, colorwheel and the
# synthetic ones, and eagle, brain, kidney, lily, skin, cells3d (downloaded on first use).
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
    "clock",
    "page",
    "text",
    "cell",
)
PHOTO_LAYOUTS = ("csv", "folders_with_test", "folders")
MIN_SIDE, MAX_SIDE = 200, 400  # output width and height, each drawn in this range
CROP_FRACTION = (0.35, 0.8)  # crop edge, as a fraction of the source's shorter side


def skimage_classes(count: int) -> list[str]:
    """``count`` distinct photographs, named by their ``skimage.data`` function (colour ones first)."""
    if not 1 <= count <= len(SKIMAGE_PHOTOS):
        raise ValueError(f"between 1 and {len(SKIMAGE_PHOTOS)} classes, not {count}")
    return list(SKIMAGE_PHOTOS[:count])


@functools.cache
def skimage_photo(name: str) -> np.ndarray:
    """The photograph ``skimage.data.<name>()`` as RGB uint8, its longer side at most 1024 px."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype != np.uint8:
        raise ValueError(f"skimage.data.{name} is {image.dtype}, not a uint8 photograph")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = np.ascontiguousarray(image[:, :, :3])
    scale = 1024 / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    image.flags.writeable = False
    return image


@dataclass(frozen=True)
class Variation:
    """How much the views of one class differ (:func:`photo_crop`)."""

    crop: tuple[float, float]  # crop edge, as a fraction of the source's (or region's) shorter side
    contrast: tuple[float, float]  # factor around mid-grey (128)
    brightness: float  # added, drawn in [-brightness, brightness]
    gain: tuple[float, float] | None = None  # a colour cast: each channel's factor, drawn in this range
    rotate: float = 0.0  # degrees, drawn in [-rotate, rotate]; 180: any angle (cropped: no empty corners)


VARIATIONS = {
    # photo_set's views since issue #10: crop, flip, mild brightness and contrast (the bytes of that code)
    "default": Variation(crop=CROP_FRACTION, contrast=(0.85, 1.15), brightness=20),
    # colour and an 8x8 thumbnail say little: any angle, a wide scale, strong light and a colour cast
    "hard": Variation(crop=(0.2, 0.9), contrast=(0.6, 1.4), brightness=50, gain=(0.75, 1.25), rotate=180),
    # fine_set: the hard light and colour cast, any angle, a crop jittered inside the class's region
    "fine": Variation(crop=(0.55, 0.9), contrast=(0.6, 1.4), brightness=50, gain=(0.75, 1.25), rotate=180),
}

# Fine-grained classes: fixed, non-overlapping regions of one photograph, as (top, left, bottom,
# right) fractions of its height and width. Every view of a class is a crop inside its region, so
# train and test views of a class share their detail, and two classes share none.
REGIONS = {
    f"{photo}_{row}_{column}": (photo, (top, left, top + 0.5, left + 0.5))
    for photo in ("coffee", "chelsea")
    for row, top in (("top", 0.0), ("bottom", 0.5))
    for column, left in (("left", 0.0), ("right", 0.5))
}
TEXTURE_CLASSES = ("brick", "grass", "gravel", "text", "coins")
FINE_CLASSES = ("coffee_top_left", "coffee_top_right", "coffee_bottom_left", "coffee_bottom_right")


def class_source(name: str) -> np.ndarray:
    """The pixels a class's views are cut from: a whole photograph or one of :data:`REGIONS`."""
    if name in REGIONS:
        photo, (top, left, bottom, right) = REGIONS[name]
        source = skimage_photo(photo)
        height, width = source.shape[:2]
        return source[round(top * height) : round(bottom * height), round(left * width) : round(right * width)]
    if name in SKIMAGE_PHOTOS:
        return skimage_photo(name)
    raise ValueError(f"{name!r} is neither in SKIMAGE_PHOTOS nor in REGIONS")


def photo_crop(name: str, rng: np.random.Generator, variation: str = "default") -> np.ndarray:
    """A random view of one photograph (or region): crop, flip, brightness/contrast, resize to 200-400 px a side.

    The crop's shorter edge is a fraction of the source's shorter side (:data:`VARIATIONS`, 35-80% by
    default), placed anywhere; its aspect ratio is the output's (up to the source's bounds), so the
    content is barely stretched. ``variation`` other than ``default`` also rotates the crop (cut from
    inside the source, no empty corners) and casts a colour (see :func:`_varied_crop`).
    """
    if variation not in VARIATIONS:
        raise ValueError(f"variation must be one of {', '.join(VARIATIONS)}, not {variation!r}")
    if variation != "default" or name not in SKIMAGE_PHOTOS:
        return _varied_crop(class_source(name), rng, VARIATIONS[variation])
    source = skimage_photo(name)
    height, width = source.shape[:2]
    out_h, out_w = (int(n) for n in rng.integers(MIN_SIDE, MAX_SIDE + 1, 2))
    short = rng.uniform(*CROP_FRACTION) * min(height, width)
    crop_h = min(height, round(short * max(1.0, out_h / out_w)))
    crop_w = min(width, round(short * max(1.0, out_w / out_h)))
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    image = source[top : top + crop_h, left : left + crop_w]
    if rng.random() < 0.5:
        image = image[:, ::-1]
    contrast, brightness = rng.uniform(0.85, 1.15), rng.uniform(-20, 20)
    image = np.clip((image.astype(np.float32) - 128) * contrast + 128 + brightness, 0, 255).astype(np.uint8)
    shrink = out_h * out_w < crop_h * crop_w
    return cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def _varied_crop(source: np.ndarray, rng: np.random.Generator, variation: Variation) -> np.ndarray:
    """A rotated crop of ``source`` (its rotated corners inside ``source``), flipped, lit, resized.

    The crop is taken at the source's resolution (bilinear), shrunk when its rotated box would not
    fit, then resized to the output (area averaging when shrinking). Light: a per-channel gain (the
    colour cast), then contrast around 128 and brightness, as in the default views.
    """
    height, width = source.shape[:2]
    out_h, out_w = (int(n) for n in rng.integers(MIN_SIDE, MAX_SIDE + 1, 2))
    short = rng.uniform(*variation.crop) * min(height, width)
    crop_h = min(height, short * max(1.0, out_h / out_w))
    crop_w = min(width, short * max(1.0, out_w / out_h))
    angle = math.radians(rng.uniform(-variation.rotate, variation.rotate)) if variation.rotate else 0.0
    cos, sin = math.cos(angle), math.sin(angle)
    box_w = abs(cos) * crop_w + abs(sin) * crop_h  # the rotated crop's axis-aligned box
    box_h = abs(sin) * crop_w + abs(cos) * crop_h
    room_w, room_h = width - 2, height - 2  # pixel centres 0.5 .. size - 1.5: half a pixel to spare
    fit = min(1.0, room_w / box_w, room_h / box_h)
    crop_w, crop_h, box_w, box_h = crop_w * fit, crop_h * fit, box_w * fit, box_h * fit
    half_w, half_h = min(box_w, room_w) / 2, min(box_h, room_h) / 2
    cx = rng.uniform(0.5 + half_w, width - 1.5 - half_w)  # the crop's centre, in source pixels
    cy = rng.uniform(0.5 + half_h, height - 1.5 - half_h)
    size_w, size_h = max(1, math.floor(crop_w)), max(1, math.floor(crop_h))
    ox, oy = (size_w - 1) / 2, (size_h - 1) / 2
    to_source = np.array([[cos, -sin, cx - cos * ox + sin * oy], [sin, cos, cy - sin * ox - cos * oy]])
    image = cv2.warpAffine(
        np.ascontiguousarray(source),
        to_source,
        (size_w, size_h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,  # black: a crop reaching outside would show (tests/test_photos.py)
    )
    if rng.random() < 0.5:
        image = image[:, ::-1]
    gain = rng.uniform(*variation.gain, 3) if variation.gain else np.ones(3)
    contrast, brightness = rng.uniform(*variation.contrast), rng.uniform(-variation.brightness, variation.brightness)
    image = image.astype(np.float32) * gain.astype(np.float32)
    image = np.clip((image - 128) * contrast + 128 + brightness, 0, 255).astype(np.uint8)
    shrink = out_h * out_w < size_h * size_w
    return cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def _save_varied(path: Path, image: np.ndarray, rng: np.random.Generator) -> Path:
    """JPEG at quality 60-95 (three times in four) or PNG; the suffix says which."""
    if rng.random() < 0.25:
        return save(path.with_suffix(".png"), image)
    return save(path.with_suffix(".jpg"), image, quality=int(rng.integers(60, 96)))


def _save_broken(path: Path, rng: np.random.Generator, name: str, variation: str = "default") -> Path:
    """A JPEG cut off after 10-60% of its bytes: a file validate must quarantine as unreadable."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(photo_crop(name, rng, variation), cv2.COLOR_RGB2BGR))
    assert ok
    data = encoded.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: int(len(data) * rng.uniform(0.1, 0.6))])
    return path


def truth_path(root: Path) -> Path:
    """Where :func:`photo_set` writes the true labels of the unlabelled images (beside ``root``)."""
    root = Path(root)
    return root.parent / f"{root.name}_truth.csv"


def photo_set(
    root: Path,
    layout: str,
    classes: int | Sequence[str],
    per_class: int,
    test_per_class: int = 0,
    unlabelled: int = 0,
    broken: int = 0,
    seed: int = 0,
    variation: str = "default",
) -> Path:
    """A dataset of random crops of real photographs (one photograph per class) in one of the layouts.

    - ``csv``: train/labels.csv (image,label) + train/images/; with ``unlabelled``, test/test.csv
      (names only: the predict split) + test/images/; with ``test_per_class``, a labelled test.csv
      instead (the two exclude each other: ingest reads one test CSV).
    - ``folders_with_test``: train/<class>/, test/<class>/ (``test_per_class``), and the unlabelled
      images as loose files in test/ (the predict split).
    - ``folders``: flat <class>/ folders (preprocess carves the test split); no test or unlabelled images.

    ``classes`` is a list of :data:`SKIMAGE_PHOTOS` or :data:`REGIONS` names, or a count
    (:func:`skimage_classes`); ``variation`` names how much the views differ (:data:`VARIATIONS`).
    ``broken`` truncated JPEGs go into the labelled training data (listed in labels.csv), spread over
    the classes. The unlabelled images cover the classes evenly, in a shuffled order; their true
    labels go to :func:`truth_path` (image,label; ``image`` as the predict stage names it), outside
    the dataset. Same arguments, same bytes.
    """
    if layout not in PHOTO_LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(PHOTO_LAYOUTS)}, not {layout!r}")
    classes = skimage_classes(classes) if isinstance(classes, int) else list(classes)
    unknown = sorted(set(classes) - set(SKIMAGE_PHOTOS) - set(REGIONS))
    if unknown or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from SKIMAGE_PHOTOS or REGIONS; got {classes}")
    if variation not in VARIATIONS:
        raise ValueError(f"variation must be one of {', '.join(VARIATIONS)}, not {variation!r}")
    if layout == "folders" and (test_per_class or unlabelled):
        raise ValueError("the flat 'folders' layout has no test split and no unlabelled images")
    if layout == "csv" and test_per_class and unlabelled:
        raise ValueError("the csv layout has one test CSV: labelled (test_per_class) or not (unlabelled)")
    root = Path(root)
    rng = np.random.default_rng(seed)
    train_dir = {"csv": root / "train", "folders_with_test": root / "train", "folders": root}[layout]
    test_dir = root / "test"

    def labelled(folder: Path, count: int, bad: int = 0) -> list[tuple[str, str]]:
        """``count`` images a class (interleaved), ``bad`` of them broken; (name, label) rows."""
        rows = []
        broken_at = set(rng.choice(count * len(classes), size=bad, replace=False).tolist()) if bad else set()
        for i in range(count * len(classes)):
            label = classes[i % len(classes)]
            if layout == "csv":
                path = folder / "images" / f"{i:04d}.jpg"
            else:
                path = folder / label / f"{label}_{i // len(classes):03d}.jpg"
            if i in broken_at:
                path = _save_broken(path, rng, label, variation)
            else:
                path = _save_varied(path, photo_crop(label, rng, variation), rng)
            rows.append((path.name, label))
        return rows

    def write_csv(path: Path, header: str, rows: list[tuple[str, ...]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([header, *(",".join(row) for row in rows)]) + "\n")

    train_rows = labelled(train_dir, per_class, broken)
    if layout == "csv":
        write_csv(train_dir / "labels.csv", "image,label", train_rows)
    if test_per_class:
        test_rows = labelled(test_dir, test_per_class)
        if layout == "csv":
            write_csv(test_dir / "test.csv", "image,label", test_rows)
    if unlabelled:
        truth = []
        labels = rng.permutation([classes[i % len(classes)] for i in range(unlabelled)])  # balanced, shuffled
        for i, label in enumerate(labels.tolist()):
            folder = test_dir / "images" if layout == "csv" else test_dir
            path = _save_varied(folder / f"new_{i:03d}.jpg", photo_crop(label, rng, variation), rng)
            truth.append((path.name if layout == "csv" else path.relative_to(root).as_posix(), label))
        if layout == "csv":
            write_csv(test_dir / "test.csv", "image", [(name,) for name, _ in truth])
        write_csv(truth_path(root), "image,label", truth)
    return root


def texture_set(
    root: Path, per_class: int, test_per_class: int = 0, layout: str = "folders_with_test", seed: int = 0, **options
) -> Path:
    """:func:`photo_set` of the five :data:`TEXTURE_CLASSES` under the ``hard`` variation.

    Brick, grass, gravel, text and coins (grayscale photographs: the colour cast is all the colour
    they get), each view at any angle, 20-90% of the photograph's shorter side, with contrast 0.6-1.4,
    brightness -50..50 and a per-channel gain of 0.75-1.25: colour and mean brightness say little.
    ``options``: photo_set's ``unlabelled`` and ``broken``.
    """
    return photo_set(root, layout, TEXTURE_CLASSES, per_class, test_per_class, seed=seed, variation="hard", **options)


def fine_set(
    root: Path,
    per_class: int,
    test_per_class: int = 0,
    layout: str = "folders_with_test",
    seed: int = 0,
    classes: Sequence[str] = FINE_CLASSES,
    **options,
) -> Path:
    """:func:`photo_set` of fine-grained classes: fixed quarters of one photograph (:data:`REGIONS`).

    Each view is a crop of 55-90% of its quarter's shorter side, anywhere inside the quarter, at any
    angle, under the hard light and colour cast (the ``fine`` variation): what tells the classes
    apart is the detail of each quarter (wood grain, the cup's rim, the saucer, the spoon), not its
    colour or its layout. ``options``: photo_set's ``unlabelled`` and ``broken``.
    """
    unknown = sorted(set(classes) - set(REGIONS))
    if unknown:
        raise ValueError(f"fine_set's classes are REGIONS names; not {', '.join(unknown)}")
    return photo_set(root, layout, classes, per_class, test_per_class, seed=seed, variation="fine", **options)
