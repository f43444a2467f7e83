"""ingest.extra: class folders of extra training images (served mistakes) added to any source,
Fashion-MNIST's IDX files included, without touching the test split."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from imgclf.data.folders import folder_name, match_class
from imgclf.data.ingest import FASHION_MNIST_CLASSES, ingest, read_ingested
from imgclf.data.preprocess import assign_splits, shard_order, write_split
from imgclf.data.shards import read_sharded
from imgclf.data.validation import validate
from imgclf.io import PipelineError
from imgclf.paths import Layout
from tests.conftest import folder_bytes, shipped
from tests.photos import class_folder_dataset

RNG = np.random.default_rng(11)


def _png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


@pytest.fixture
def feedback_folder(tmp_path) -> Path:
    """What `imgclf.feedback export` writes for a Fashion-MNIST service: a folder per class the user
    named, one of them a class name with a '/' (T-shirt/top), one a folder that is no class."""
    folder = tmp_path / "raw" / "feedback"
    for i in range(3):
        _png(folder / folder_name("T-shirt/top") / f"feedback-{i}.png", RNG.integers(0, 256, (28, 28), np.uint8))
    for i in range(2):  # a phone photo: larger, in colour, another folder spelling
        _png(folder / "ankle_boot" / f"feedback-{i}.jpg", RNG.integers(0, 256, (120, 90, 3), np.uint8))
    _png(folder / "socks" / "feedback-0.png", RNG.integers(0, 256, (28, 28), np.uint8))
    return folder


def _ingest(tmp_path: Path, name: str, **overrides) -> tuple[Layout, dict]:
    layout = Layout(tmp_path / name)
    return layout, ingest(shipped("ingest", **overrides), layout)


def test_folder_names_round_trip_to_their_classes():
    for name in FASHION_MNIST_CLASSES:
        assert match_class(folder_name(name), FASHION_MNIST_CLASSES) == name
    assert folder_name("T-shirt/top") == "T-shirt_top" and folder_name(".hidden") == "hidden"
    assert match_class("ankle-BOOT", FASHION_MNIST_CLASSES) == "Ankle boot"
    assert match_class("socks", FASHION_MNIST_CLASSES) is None
    assert match_class("a_b", ["a b", "a-b"]) is None  # two classes fit: neither is guessed


def test_extra_joins_fashion_mnist_training_and_is_validated_and_preprocessed(
    digits_idx_dir, feedback_folder, tmp_path
):
    layout, meta = _ingest(tmp_path, "mixed", fashion_mnist_dir=str(digits_idx_dir), extra=str(feedback_folder))
    assert meta["format"] == "mixed" and meta["array_rows"] == 1797
    assert meta["extra"] == {"folder": str(feedback_folder), "rows": 6} and meta["rows"] == 1797 + 6
    reader, manifest, meta = read_ingested(layout)
    extra = manifest[manifest["id"].str.startswith("extra:")]
    assert sorted(extra["label"]) == ["Ankle boot", "Ankle boot", "T-shirt/top", "T-shirt/top", "T-shirt/top", "socks"]
    assert set(extra["split"]) == {"train"} and extra["source"].str.startswith(str(feedback_folder)).all()
    array_row = next(manifest.itertuples())  # the readers take manifest tuples
    assert array_row.name == array_row.id and reader.image(array_row).shape == (28, 28)
    photo = next(extra[extra["label"] == "Ankle boot"].itertuples())
    assert reader.image(photo).shape == (120, 90, 3)

    result = validate(manifest, reader, meta["class_names"], shipped("validate", min_per_class=1), workers=1)
    assert list(result.quarantine["id"]) == ["extra:socks/feedback-0.png"]  # counted, not lost
    assert result.quarantine["rule"].iloc[0] == "unknown_label"
    assert result.report["formats"] == {"JPEG": 2, "PNG": 3, "array": 1797}
    assert result.report["file_mb"]["max"] > 0  # over the files, not the array's rows

    kept = result.kept.reset_index(drop=True)
    kept["split"] = assign_splits(kept, 0.1, 0.1, 42)
    kept["label_index"] = kept["label"].map({name: i for i, name in enumerate(meta["class_names"])})
    rows = shard_order(kept[kept["id"].str.startswith("extra:") | (kept["split"] == "test")])
    write_split(reader, rows, tmp_path / "out", 28, "grayscale", workers=1)
    x = read_sharded(tmp_path / "out", "x", (28, 28, 1))
    assert x.shape == (len(rows), 28, 28, 1)
    test_row = next(rows[rows["split"] == "test"].itertuples())  # an array row's pixels come through unchanged
    assert np.array_equal(x[test_row.Index, ..., 0], reader.image(test_row))
    assert (rows["split"] == "test").sum() == 297 and rows["id"].str.startswith("extra:").sum() == 5


def test_extra_moves_no_test_image_and_repeats_byte_for_byte(digits_idx_dir, feedback_folder, tmp_path):
    plain_layout, plain = _ingest(tmp_path, "plain", fashion_mnist_dir=str(digits_idx_dir))
    assert plain["format"] == "array" and "extra" not in plain and not plain_layout.ingested_shards.exists()
    runs = [_ingest(tmp_path, f"run{i}", fashion_mnist_dir=str(digits_idx_dir), extra=str(feedback_folder))[0]
            for i in range(2)]  # fmt: skip
    assert folder_bytes(runs[0].ingested) == folder_bytes(runs[1].ingested)
    assert plain_layout.ingested_images.read_bytes() == runs[0].ingested_images.read_bytes()
    _, before, _ = read_ingested(plain_layout)
    _, after, _ = read_ingested(runs[0])
    assert after[after["split"] == "test"]["id"].tolist() == before[before["split"] == "test"]["id"].tolist()


def test_extra_joins_a_photo_folder_too(tmp_path):
    photos = class_folder_dataset(tmp_path / "photos", per_class=4, test_per_class=2)
    extra = tmp_path / "extra"
    first_class = sorted(p.name for p in (photos / "train").iterdir())[0]
    _png(extra / first_class.upper() / "feedback-0.png", RNG.integers(0, 256, (300, 300, 3), np.uint8))
    layout, meta = _ingest(tmp_path, "repo", source=str(photos), extra=str(extra))
    assert meta["format"] == "bytes" and meta["extra"]["rows"] == 1
    _, manifest, _ = read_ingested(layout)
    row = manifest[manifest["id"] == f"extra:{first_class.upper()}/feedback-0.png"].iloc[0]
    assert row["label"] == first_class and row["split"] == "train"


def test_an_extra_folder_that_could_change_the_test_split_is_refused(digits_idx_dir, tmp_path):
    with pytest.raises(PipelineError, match=r"ingest\.extra=.* is not a folder"):
        _ingest(tmp_path, "a", fashion_mnist_dir=str(digits_idx_dir), extra=str(tmp_path / "nowhere"))
    split = tmp_path / "split"
    _png(split / "train" / "Bag" / "a.png", np.zeros((28, 28), np.uint8))
    _png(split / "test" / "Bag" / "b.png", np.zeros((28, 28), np.uint8))
    with pytest.raises(PipelineError, match="one folder per class and nothing else"):
        _ingest(tmp_path, "b", fashion_mnist_dir=str(digits_idx_dir), extra=str(split))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match=r"ingest\.extra: .*empty has no class subfolders"):
        _ingest(tmp_path, "c", fashion_mnist_dir=str(digits_idx_dir), extra=str(tmp_path / "empty"))


def _splits(layout: Layout) -> pd.Series:
    """The final split of every ingested row, as preprocess assigns it (all rows kept)."""
    _, manifest, _ = read_ingested(layout)
    return pd.Series(assign_splits(manifest, 0.1, 0.1, 42).to_numpy(), index=manifest["id"])


def test_extra_images_only_ever_train_val_and_test_stay_the_same_rows(digits_idx_dir, feedback_folder, tmp_path):
    """A source without a test folder gets val and test carved by preprocess: the extra rows stay out of
    both carves and their counts, so the two splits are the very rows they are without them."""
    photos = class_folder_dataset(tmp_path / "photos", per_class=12)  # no test/: preprocess carves one
    extra = tmp_path / "extra"
    for label in sorted(p.name for p in photos.iterdir()):
        for i in range(5):
            _png(extra / label / f"feedback-{i}.png", RNG.integers(0, 256, (300, 300, 3), np.uint8))
    cases = [({"source": str(photos)}, extra, 5 * len(list(photos.iterdir()))),
             ({"fashion_mnist_dir": str(digits_idx_dir)}, feedback_folder, 6)]  # fmt: skip
    for n, (source, folder, count) in enumerate(cases):
        before = _splits(_ingest(tmp_path, f"before{n}", **source)[0])
        after = _splits(_ingest(tmp_path, f"after{n}", **source, extra=str(folder))[0])
        added = after[after.index.str.startswith("extra:")]
        assert len(added) == count and set(added) == {"train"}
        assert after.drop(added.index).equals(before)  # every source row in the split it had
        assert (before == "test").sum() > 0 and (before == "val").sum() > 0


def test_a_fashion_mnist_image_sent_back_as_a_png_is_caught_as_the_duplicate_it_is(digits_idx_dir, tmp_path):
    """A test image a user sent to the service and confirmed would leak the test split into training; a
    training image corrected to another class contradicts the dataset. Their file hashes never equal
    the array's pixel hashes, so the duplicate rules compare pixels for mixed data."""
    from imgclf.data.ingest import read_idx

    test_images = read_idx(digits_idx_dir / "t10k-images-idx3-ubyte")
    train_images = read_idx(digits_idx_dir / "train-images-idx3-ubyte")
    train_labels = read_idx(digits_idx_dir / "train-labels-idx1-ubyte")
    folder = tmp_path / "feedback"
    _png(folder / "Bag" / "feedback-test.png", test_images[5])
    wrong = FASHION_MNIST_CLASSES[(int(train_labels[7]) + 1) % 10]
    _png(folder / folder_name(wrong) / "feedback-train.png", train_images[7])
    _png(folder / "Bag" / "feedback-new.png", 255 - test_images[5])  # not in the dataset
    layout, _ = _ingest(tmp_path, "repo", fashion_mnist_dir=str(digits_idx_dir), extra=str(folder))
    reader, manifest, meta = read_ingested(layout)
    result = validate(manifest, reader, meta["class_names"], shipped("validate", min_per_class=1), workers=1)
    quarantined = result.quarantine.set_index("id")
    assert quarantined.loc["extra:Bag/feedback-test.png", "rule"] == "duplicate_across_splits"
    assert "test/00005" in quarantined.loc["extra:Bag/feedback-test.png", "reason"]
    conflict = quarantined[quarantined["rule"] == "duplicate_in_split"]
    assert sorted(conflict.index) == sorted([f"extra:{folder_name(wrong)}/feedback-train.png", "train/00007"])
    assert "extra:Bag/feedback-new.png" in set(result.kept["id"])
    assert "pixels_sha256" not in result.kept  # a check's working column, not an output
