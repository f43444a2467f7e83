import gzip
import pickle
import sys

import numpy as np
import pandas as pd
import pytest

from imgclf.data import ingest
from imgclf.data.ingest import (
    FASHION_MNIST_CLASSES,
    IngestedImages,
    Ref,
    find_fashion_mnist,
    limit_per_class,
    load_fashion_mnist,
    read_idx,
)
from imgclf.io import PipelineError
from imgclf.paths import Layout
from tests.conftest import write_idx


def test_read_idx_roundtrip_plain_and_gzip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte", expected_ndim=3), array)
    (tmp_path / "b.gz").write_bytes(gzip.compress((tmp_path / "a-idx3-ubyte").read_bytes()))
    np.testing.assert_array_equal(read_idx(tmp_path / "b.gz"), array)


def test_read_idx_rejects_bad_magic_and_wrong_size(tmp_path):
    (tmp_path / "text").write_bytes(b"hello, this is not an IDX file")
    with pytest.raises(PipelineError, match="bad magic"):
        read_idx(tmp_path / "text")
    write_idx(tmp_path / "ok", np.zeros((5, 4), dtype=np.uint8))
    truncated = (tmp_path / "ok").read_bytes()[:-3]
    (tmp_path / "short").write_bytes(truncated)
    with pytest.raises(PipelineError, match="declares shape"):
        read_idx(tmp_path / "short")
    with pytest.raises(PipelineError, match="expected 3 dimensions"):
        read_idx(tmp_path / "ok", expected_ndim=3)


def test_limit_per_class_keeps_first_rows_of_each_class():
    labels = np.array([0, 1, 0, 2, 0, 1, 2, 2])
    np.testing.assert_array_equal(limit_per_class(labels, 2), [0, 1, 2, 3, 5, 6])
    np.testing.assert_array_equal(limit_per_class(labels, None), np.arange(8))
    with pytest.raises(PipelineError):
        limit_per_class(labels, 0)


def test_load_real_fashion_mnist_with_limit(fashion_mnist_dir):
    dataset = load_fashion_mnist(fashion_mnist_dir, limit=5)
    manifest = dataset.manifest
    assert dataset.images.shape == (100, 28, 28) and dataset.images.dtype == np.uint8
    assert manifest.groupby(["split", "label"]).size().eq(5).all()
    assert sorted(manifest["label"].unique()) == sorted(FASHION_MNIST_CLASSES)
    assert manifest["id"].is_unique and (manifest["index"] == np.arange(100)).all()
    # sha256 is of the pixels of the row's own image
    row = manifest.iloc[37]
    assert ingest.pixel_sha256(dataset.images[row["index"]][None])[0] == row["sha256"]


def test_load_digits_as_idx(digits_idx_dir):
    dataset = load_fashion_mnist(digits_idx_dir)
    assert len(dataset.manifest) == 1797
    assert (dataset.manifest["split"] == "test").sum() == 297


def test_count_mismatch_is_a_clear_error(digits_idx_dir):
    write_idx(digits_idx_dir / "t10k-labels-idx1-ubyte", np.zeros(10, dtype=np.uint8))
    with pytest.raises(PipelineError, match="297 images but 10 labels"):
        load_fashion_mnist(digits_idx_dir)


def test_missing_dataset_gives_one_clear_message(tmp_path, monkeypatch):
    with pytest.raises(PipelineError, match="does not hold the four Fashion-MNIST IDX files"):
        find_fashion_mnist(str(tmp_path))
    monkeypatch.setattr(ingest, "SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setattr(ingest, "KERAS_CACHE_DIR", tmp_path / "cache" / "fashion-mnist")

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    import keras

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(PipelineError, match="apt-get install dataset-fashion-mnist"):
        find_fashion_mnist()


MARKER = None  # set in the test process only; a forked worker would inherit the change


def _row_sum_and_marker(reader, ref):
    return int(reader.raw(ref).sum()), MARKER


def test_worker_processes_do_not_inherit_the_callers_memory(digits, monkeypatch):
    """Workers start from a fork server: a threaded caller (TensorFlow loaded) is never forked."""
    images = digits[0]
    monkeypatch.setattr(sys.modules[__name__], "MARKER", "caller only")
    reader = IngestedImages.from_array(images)
    refs = reader.refs(pd.DataFrame({"index": range(len(images))}))
    results = reader.map(_row_sum_and_marker, refs, workers=2, desc="test")
    assert [total for total, _ in results] == [int(image.sum()) for image in images]  # in order
    assert {marker for _, marker in results} == {None}


def test_a_packed_reader_pickles_its_path_not_its_data(tmp_path):
    paths = Layout(tmp_path)
    paths.ingested_shards.mkdir(parents=True)
    blob = np.random.default_rng(0).integers(0, 256, 4_000_000, dtype=np.uint8)
    blob.tofile(paths.ingested_shards / "images-07.bin")
    reader = IngestedImages(paths, {"format": "bytes"})
    sent = pickle.dumps(reader)
    assert len(sent) < 10_000
    row = Ref(0, shard=7, offset=1000, nbytes=50)
    np.testing.assert_array_equal(pickle.loads(sent).raw(row), blob[1000:1050])
