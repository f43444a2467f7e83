import numpy as np
import pytest

from imgclf.data.shards import SHARDS, ShardedArray, read_sharded, shard_files, shard_of, write_sharded


def test_chunks_crossing_shard_boundaries_land_in_their_shards(tmp_path):
    shard_ids = np.array([0, 0, 0, 5, 5, 9, 9, 9, 9, 63])
    rows = np.arange(len(shard_ids) * 4, dtype=np.uint8).reshape(-1, 2, 2)
    chunks = [rows[:4], rows[4:5], rows[5:]]  # boundaries fall inside chunks and between them
    written = write_sharded(tmp_path, "x", shard_ids, chunks, (2, 2))
    assert [p.name for p in written] == ["x-00.npy", "x-05.npy", "x-09.npy", "x-63.npy"]
    np.testing.assert_array_equal(read_sharded(tmp_path, "x", (2, 2)), rows)
    np.testing.assert_array_equal(ShardedArray(tmp_path, "x", (2, 2)).row_shards(), shard_ids)
    np.testing.assert_array_equal(np.load(tmp_path / "x-09.npy"), rows[5:9])


def test_a_rewrite_removes_shards_that_no_longer_hold_rows(tmp_path):
    write_sharded(tmp_path, "y", [1, 2, 3], [np.array([1, 2, 3])], (), dtype=np.int64)
    write_sharded(tmp_path, "y", [2], [np.array([7])], (), dtype=np.int64)
    assert [p.name for p in shard_files(tmp_path, "y")] == ["y-02.npy"]
    assert read_sharded(tmp_path, "y", (), dtype=np.int64).tolist() == [7]


def test_rows_out_of_shard_order_or_missing_are_refused(tmp_path):
    with pytest.raises(ValueError, match="shard order"):
        write_sharded(tmp_path, "x", [3, 1], [np.zeros((2, 1), np.uint8)], (1,))
    with pytest.raises(ValueError, match="expected 3 rows"):
        write_sharded(tmp_path, "x", [1, 1, 2], [np.zeros((2, 1), np.uint8)], (1,))
    assert not list(tmp_path.glob("x-*.npy"))  # nothing half-written renamed into place


def test_an_empty_split_reads_as_an_empty_array_of_the_right_shape(tmp_path):
    assert read_sharded(tmp_path / "none", "x", (8, 8, 3)).shape == (0, 8, 8, 3)


def test_shards_spread_evenly_and_do_not_depend_on_anything_but_the_hash():
    import hashlib

    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(6400)]
    counts = np.bincount([shard_of(h) for h in hashes], minlength=SHARDS)
    assert counts.min() > 60 and counts.max() < 145  # about 100 each
    assert shard_of("00000041" + "f" * 56) == 0x41 % SHARDS


def test_a_lazy_sharded_array_reads_the_rows_asked_for_in_order(tmp_path):
    shard_ids = np.repeat([2, 7, 30], [3, 1, 4])
    rows = np.arange(8 * 3, dtype=np.uint8).reshape(8, 3)
    write_sharded(tmp_path, "x", shard_ids, [rows], (3,))
    lazy = ShardedArray(tmp_path, "x", (3,))
    assert len(lazy) == 8 and lazy.shape == (8, 3)
    np.testing.assert_array_equal(lazy[np.array([7, 0, 3, 4])], rows[[7, 0, 3, 4]])
    np.testing.assert_array_equal(lazy[5], rows[5])
    np.testing.assert_array_equal(lazy[2:6], rows[2:6])
    np.testing.assert_array_equal(np.asarray(lazy), rows)


def test_an_empty_file_in_a_shard_of_its_own_reads_as_no_bytes(tmp_path):
    from imgclf.data.ingest import IngestedImages, Ref
    from imgclf.paths import Layout

    paths = Layout(tmp_path)
    paths.ingested_shards.mkdir(parents=True)
    (paths.ingested_shards / "images-02.bin").write_bytes(b"")  # the empty file's shard holds nothing else
    reader = IngestedImages(paths, {"format": "bytes"})
    assert reader.raw(Ref(0, shard=2, offset=0, nbytes=0)).size == 0
