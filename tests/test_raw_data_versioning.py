"""Photos under data/raw, tracked with `dvc add`: changes rerun the pipeline, git + dvc checkout
travel back in time, and a small change costs a small part of DVC's cache."""

import hashlib
import shutil
from pathlib import Path

import pytest

from imgclf.data.ingest import read_manifest
from imgclf.paths import layout
from tests.conftest import run, set_params
from tests.photos import photo_set

pytestmark = pytest.mark.slow
SOURCE = "data/raw/photos"


def _cache_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in (root / ".dvc" / "cache").rglob("*") if f.is_file())


def _commit(root: Path, message: str) -> None:
    run(["dvc", "add", SOURCE], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", message], root)


@pytest.fixture
def photo_repo(repo_copy):
    photo_set(repo_copy / SOURCE, "folders", classes=3, per_class=40, seed=4)
    set_params(
        repo_copy,
        ingest={"source": SOURCE},
        validate={"min_per_class": 10},
        preprocess={"image_size": 32, "color_mode": "rgb"},
        train={"epochs": 1, "batch_size": 32},
        export={"variants": ["float32"], "calibration_samples": 20, "latency_runs": 2, "max_accuracy_drop": 1.0},
        predict={"variant": "float32"},
    )
    _commit(repo_copy, "photos")
    return repo_copy


def _photo_ids(root: Path) -> dict[str, str]:
    manifest = read_manifest(layout(root).ingested_manifest)
    return dict(zip(manifest["id"], manifest["label"], strict=True))


def test_adding_removing_and_relabelling_a_photo_each_rerun_the_data_stages(photo_repo):
    root, folder = photo_repo, photo_repo / SOURCE
    run(["dvc", "repro", "augment"], root)
    _commit(root, "data stages")
    cache_after_first_run = _cache_bytes(root)
    first, label_of = _photo_ids(root), {}
    classes = sorted({label for label in first.values()})
    some = sorted(first)[:3]  # e.g. astronaut/astronaut_000.png

    added = folder / classes[1] / "added.png"
    shutil.copy(folder / some[0], added)  # a copy of another class's photo, under a new name and class
    removed = folder / some[1]
    relabelled = folder / some[2]
    changes = {
        "add": lambda: None,
        "remove": removed.unlink,
        "relabel": lambda: relabelled.rename(folder / classes[2] / relabelled.name),
    }
    growth = {}
    for change, apply in changes.items():
        apply()
        assert "data/raw" in run(["dvc", "status", "ingest"], root).stdout, change  # DVC sees it...
        before = _cache_bytes(root)
        result = run(["dvc", "repro", "augment"], root)
        for stage in ("ingest", "validate", "preprocess", "augment"):
            assert f"Running stage '{stage}'" in result.stdout, (change, stage)  # ...and reruns
        _commit(root, change)
        growth[change] = _cache_bytes(root) - before
        label_of = _photo_ids(root)
    assert label_of[f"{classes[1]}/added.png"] == classes[1]
    assert some[1] not in label_of
    assert label_of[f"{classes[2]}/{relabelled.name}"] == classes[2] and some[2] not in label_of

    # each change stored a small part of what the first run stored (64 shards per sharded output)
    for change, grown in growth.items():
        assert grown < 0.15 * cache_after_first_run, (change, grown, cache_after_first_run)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_git_and_dvc_checkout_bring_back_the_photos_and_their_model(photo_repo):
    root, folder = photo_repo, photo_repo / SOURCE
    paths = layout(root)
    run(["dvc", "repro"], root)
    _commit(root, "v1")
    v1_model, v1_photos = _sha(paths.model), sorted(p.name for p in folder.rglob("*.png"))

    victim = sorted(folder.rglob("*.png"))[0]
    victim.unlink()
    shutil.copy(sorted(folder.rglob("*.jpg"))[0], victim.with_name("extra.jpg"))
    run(["dvc", "repro"], root)
    _commit(root, "v2")
    assert _sha(paths.model) != v1_model

    run(["git", "checkout", "-q", "HEAD~1"], root)
    run(["dvc", "checkout"], root)
    assert sorted(p.name for p in folder.rglob("*.png")) == v1_photos
    assert not list(folder.rglob("extra.jpg"))
    assert _sha(paths.model) == v1_model
    assert "up to date" in run(["dvc", "status"], root).stdout  # photos, data and model agree again
