"""The real-photo generators (tests/photos.py): same arguments, same bytes; counts, classes and layout;
the hard variations vary; photo_set's existing output unchanged. Seconds, no training."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.photos import (
    FINE_CLASSES,
    REGIONS,
    TEXTURE_CLASSES,
    VARIATIONS,
    Variation,
    _varied_crop,
    class_source,
    fine_set,
    photo_crop,
    photo_set,
    skimage_photo,
    texture_set,
    truth_path,
)

IMAGE_SUFFIXES = {".jpg", ".png"}


def digest(root: Path) -> str:
    """sha256 over every file under ``root`` (relative path and bytes, in path order) and its truth file."""
    files = sorted(path for path in root.rglob("*") if path.is_file())
    if truth_path(root).exists():
        files.append(truth_path(root))
    h = hashlib.sha256()
    for path in files:
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def images(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix in IMAGE_SUFFIXES)


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


# photo_set's bytes before the hard variations were added (computed with that code, opencv-python-headless
# of requirements.txt: JPEG and resampling bytes are those of the installed OpenCV).
UNCHANGED = {
    "csv": (
        {"layout": "csv", "classes": 3, "per_class": 2, "broken": 1, "unlabelled": 3, "seed": 5},
        "2b18c1411273765706fe9bea731d65355e2313eba253535a40a1af229b1c22d1",
    ),
    "folders_with_test": (
        {
            "layout": "folders_with_test",
            "classes": ["coins", "text", "chelsea"],
            "per_class": 2,
            "test_per_class": 1,
            "unlabelled": 2,
            "seed": 7,
        },
        "2b9d560cd08825191faa124296c3767a5803d64fda97cec177a7dcc95b7885d6",
    ),
    "folders": (
        {"layout": "folders", "classes": 2, "per_class": 3, "seed": 0},
        "8e2e95f0828378e253fc1bbce46e74997605d945f15de7b76372d9b46fb3a1af",
    ),
}


@pytest.mark.parametrize("name", list(UNCHANGED))
def test_photo_set_bytes_are_unchanged(tmp_path, name):
    arguments, expected = UNCHANGED[name]
    assert digest(photo_set(tmp_path / name, **arguments)) == expected


def test_default_variation_is_the_old_default(tmp_path):
    """Passing ``variation="default"`` explicitly is the same call as leaving it out."""
    arguments = {"layout": "folders", "classes": ["brick", "coffee"], "per_class": 2, "seed": 3}
    assert digest(photo_set(tmp_path / "a", **arguments)) == digest(
        photo_set(tmp_path / "b", **arguments, variation="default")
    )


@pytest.mark.parametrize("generate", [texture_set, fine_set])
def test_same_arguments_same_bytes_other_seed_other_bytes(tmp_path, generate):
    a = digest(generate(tmp_path / "a", per_class=2, test_per_class=1, seed=4))
    b = digest(generate(tmp_path / "b", per_class=2, test_per_class=1, seed=4))
    c = digest(generate(tmp_path / "c", per_class=2, test_per_class=1, seed=5))
    assert a == b != c


@pytest.mark.parametrize(("generate", "classes"), [(texture_set, TEXTURE_CLASSES), (fine_set, FINE_CLASSES)])
def test_counts_classes_and_layout(tmp_path, generate, classes):
    root = generate(tmp_path / "set", per_class=3, test_per_class=2, seed=1, unlabelled=4)
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(classes)
    assert sorted(p.name for p in (root / "test").iterdir() if p.is_dir()) == sorted(classes)
    for label in classes:
        train = images(root / "train" / label)
        assert len(train) == 3 and all(p.name.startswith(f"{label}_") for p in train)
        assert len(images(root / "test" / label)) == 2
    assert len(images(root / "test")) == 4  # loose files: the predict split
    truth = truth_path(root).read_text().splitlines()
    assert truth[0] == "image,label" and len(truth) == 5
    for path in images(root / "train" / classes[0]):
        height, width = read_rgb(path).shape[:2]
        assert 200 <= height <= 400 and 200 <= width <= 400


def test_csv_layout_and_broken_files_with_a_variation(tmp_path):
    root = texture_set(tmp_path / "set", per_class=2, layout="csv", broken=2, seed=0)
    rows = (root / "train" / "labels.csv").read_text().splitlines()
    assert rows[0] == "image,label" and len(rows) == 1 + 2 * len(TEXTURE_CLASSES)
    jpegs = [p.read_bytes() for p in (root / "train" / "images").iterdir() if p.suffix == ".jpg"]
    cut_off = [data for data in jpegs if not data.endswith(b"\xff\xd9")]  # no end-of-image marker
    assert len(cut_off) == 2


def test_fine_classes_are_disjoint_quarters_of_one_photograph():
    photo = skimage_photo("coffee")
    covered = np.zeros(photo.shape[:2], int)
    for name in FINE_CLASSES:
        source_name, (top, left, bottom, right) = REGIONS[name]
        assert source_name == "coffee" and name.startswith("coffee_")
        height, width = photo.shape[:2]
        covered[round(top * height) : round(bottom * height), round(left * width) : round(right * width)] += 1
        assert class_source(name).shape[:2] == (height // 2, width // 2)
    assert covered.max() == 1  # no pixel in two classes


def colour_spread(name: str, variation: str, count: int = 24) -> float:
    """Standard deviation, across ``count`` views, of each view's mean R-G and B-G (the colour cast), summed."""
    rng = np.random.default_rng(0)
    means = np.array([photo_crop(name, rng, variation).reshape(-1, 3).mean(0) for _ in range(count)])
    return float((means[:, 0] - means[:, 1]).std() + (means[:, 2] - means[:, 1]).std())


def brightness_spread(name: str, variation: str, count: int = 24) -> float:
    rng = np.random.default_rng(0)
    return float(np.std([photo_crop(name, rng, variation).mean() for _ in range(count)]))


@pytest.mark.parametrize("name", ["brick", "gravel"])
def test_hard_variation_varies_colour_and_light(name):
    # grayscale photographs: every default view is gray (R = G = B); the hard views get a colour cast
    assert colour_spread(name, "default") < 1.0
    assert colour_spread(name, "hard") > 8.0
    assert brightness_spread(name, "hard") > 1.5 * brightness_spread(name, "default")


def test_fine_variation_varies_colour_and_stays_inside_its_region():
    assert colour_spread("coffee_top_left", "fine") > 2 * colour_spread("coffee", "default")
    rng = np.random.default_rng(0)
    view = photo_crop("coffee_top_left", rng, "fine")
    assert view.dtype == np.uint8 and view.ndim == 3 and view.shape[2] == 3


@pytest.mark.parametrize("variation", ["hard", "fine"])
def test_rotated_crops_stay_inside_the_source(variation):
    """Any angle, the largest crops, odd shapes: every output pixel is interpolated from inside the
    source (outside is black), so a constant source gives a constant view: no empty corners."""
    geometry = VARIATIONS[variation]
    no_light = Variation(crop=(geometry.crop[0], 1.0), contrast=(1.0, 1.0), brightness=0, rotate=geometry.rotate)
    rng = np.random.default_rng(1)
    for height, width in [(300, 500), (172, 448), (512, 512), (150, 225)]:
        for _ in range(25):
            view = _varied_crop(np.full((height, width, 3), 200, np.uint8), rng, no_light)
            assert view.min() == view.max() == 200


def test_unknown_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="variation"):
        photo_set(tmp_path / "a", "folders", 2, 1, variation="wild")
    with pytest.raises(ValueError, match="REGIONS"):
        photo_set(tmp_path / "b", "folders", ["coffee_middle"], 1)
    with pytest.raises(ValueError, match="REGIONS"):
        fine_set(tmp_path / "c", 1, classes=["coffee"])
