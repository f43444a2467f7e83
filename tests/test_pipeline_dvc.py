"""The data stages under DVC, in a throwaway copy of the repository with a small limit."""

import hashlib
from pathlib import Path

import pytest

from imgclf.data.shards import read_split
from imgclf.paths import layout
from tests.conftest import run, set_params

pytestmark = pytest.mark.slow


def output_hashes(root: Path) -> dict[str, str]:
    paths = layout(root)
    folders = (paths.ingested, paths.validated, paths.preprocessed, paths.augmented)
    files = [
        *(file for folder in folders for file in sorted(folder.rglob("*")) if file.is_file()),
        paths.validation_report,
        paths.quarantine,
        paths.augment_policy,
        paths.augment_preview,
    ]
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_data_stages_repro_noop_and_byte_identical_on_force(repo_copy, fashion_mnist_dir):
    set_params(repo_copy, ingest={"limit": 40}, validate={"min_per_class": 20})
    first = run(["dvc", "repro", "augment"], repo_copy)
    for stage in ("ingest", "validate", "preprocess", "augment"):
        assert f"Running stage '{stage}'" in first.stdout
    hashes = output_hashes(repo_copy)
    assert len(hashes) >= 15
    assert len(read_split(layout(repo_copy), "train")[0]) > 0

    again = run(["dvc", "repro", "augment"], repo_copy)
    assert "Running stage" not in again.stdout
    assert "up to date" in run(["dvc", "status", "augment"], repo_copy).stdout

    run(["dvc", "repro", "--force", "augment"], repo_copy)
    assert output_hashes(repo_copy) == hashes

    # a change to one stage's params reruns that stage only
    set_params(repo_copy, augment={"seed": 7})
    changed = run(["dvc", "repro", "augment"], repo_copy)
    assert "Running stage 'augment'" in changed.stdout
    assert "Running stage 'preprocess'" not in changed.stdout


def test_stage_errors_are_one_line(repo_copy):
    set_params(repo_copy, ingest={"source": "no-such-dataset"})
    result = run(["python", "stages/ingest.py"], repo_copy, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "ingest: error: ingest.source='no-such-dataset'" in result.stderr

    result = run(["python", "stages/validate.py"], repo_copy, check=False)
    assert result.returncode == 1 and "run the ingest stage first" in result.stderr
