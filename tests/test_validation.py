import numpy as np
import pytest

from imgclf.data.validation import summary_markdown, validate
from imgclf.io import PipelineError
from tests.conftest import manifest_for, merged, shipped

CLASSES = [str(d) for d in range(10)]
PARAMS = shipped(
    "validate",
    on_error="quarantine",
    max_bad_fraction=0.05,
    min_edge=8,
    min_per_class=30,
    max_imbalance_ratio=10,
    near_duplicate_distance=4,
    rules={"class_imbalance": "warn"},
)


@pytest.fixture
def digits_data(digits):
    """Real digits with known defects injected: 2 in-split copies, 1 conflicting pair, 1 leak, 1 unknown label."""
    images, target = digits
    images = images.copy()
    labels = [str(t) for t in target]
    splits = ["train"] * 1500 + ["test"] * 297
    # digits itself holds exact duplicates; count them first so injected ones are on top
    images[10] = images[11]
    labels[10] = labels[11]  # same label: one copy quarantined
    images[20] = images[21]
    labels[20] = "7" if labels[21] != "7" else "1"  # conflicting labels: both quarantined
    images[30] = images[1600]  # a training copy of a test image: leakage
    labels[40] = "cat"
    return images, manifest_for(images, labels, splits)


def test_rows_in_equals_kept_plus_quarantined_with_reasons(digits_data):
    images, manifest = digits_data
    result = validate(manifest, images, CLASSES, PARAMS)
    report, quarantine = result.report, result.quarantine
    assert report["rows_in"] == 1797 == report["rows_kept"] + report["rows_quarantined"]
    assert len(result.kept) + len(quarantine) == 1797
    assert set(result.kept["id"]).isdisjoint(quarantine["id"])
    by_id = quarantine.set_index("id")
    assert by_id.loc["train/00011", "rule"] == "duplicate_in_split"
    assert "same content as train/00010" in by_id.loc["train/00011", "reason"]
    assert "train/00010" not in by_id.index  # the first copy is kept
    assert {"train/00020", "train/00021"} <= set(by_id.index)
    assert "conflicting labels" in by_id.loc["train/00021", "reason"]
    assert by_id.loc["train/00030", "rule"] == "duplicate_across_splits"
    assert "test/01600" in by_id.loc["train/00030", "reason"]
    assert by_id.loc["train/00040", "rule"] == "unknown_label"
    assert report["passed"] and not result.failures
    assert report["quarantined_by_rule"]["unknown_label"] == 1
    assert "PASSED" in summary_markdown(report, result.failures)


def test_warn_keeps_rows_and_off_skips_rule(digits_data):
    images, manifest = digits_data
    params = merged(PARAMS, {"rules": {"duplicate_in_split": "warn", "duplicate_across_splits": "off"}})
    result = validate(manifest, images, CLASSES, params)
    assert result.report["rules"]["duplicate_in_split"]["hits"] >= 3
    assert result.report["rules"]["duplicate_across_splits"] == {"severity": "off", "hits": 0}
    assert set(result.quarantine["rule"]) == {"unknown_label"}


def test_min_edge_rule(digits_data):
    images, manifest = digits_data
    result = validate(manifest, images, CLASSES, {**PARAMS, "min_edge": 28, "max_bad_fraction": 1})
    assert result.report["rows_quarantined"] == 1797
    assert "shortest edge 8 px < validate.min_edge 28" in result.quarantine["reason"].iloc[0]
    assert not result.report["passed"]  # every class now has too few images


def test_on_error_fail_and_bad_fraction_fail_the_stage(digits_data):
    images, manifest = digits_data
    failed = validate(manifest, images, CLASSES, {**PARAMS, "on_error": "fail"})
    assert failed.failures and "break error rules" in failed.failures[0]
    strict = validate(manifest, images, CLASSES, {**PARAMS, "max_bad_fraction": 0.001})
    assert any("max_bad_fraction" in f for f in strict.failures)


def test_dataset_rules_min_per_class_and_imbalance(digits):
    images, target = digits
    keep = np.flatnonzero((target != 3) | (np.arange(len(target)) % 10 == 0))  # class 3 shrinks to ~18
    images, labels = images[keep], [str(t) for t in target[keep]]
    manifest = manifest_for(images, labels, ["train"] * len(keep))
    result = validate(
        manifest,
        images,
        CLASSES,
        merged(PARAMS, {"max_imbalance_ratio": 5, "rules": {"duplicate_in_split": "off", "class_imbalance": "warn"}}),
    )
    assert any("3 (" in f and "min_per_class" in f for f in result.failures)
    assert result.report["imbalance_ratio"] > 5
    assert result.report["rules"]["class_imbalance"]["hits"] == 1
    assert result.report["warnings"] == 1  # imbalance is a warning, not a failure
    assert not any("imbalance" in f for f in result.failures)


def test_bad_params_are_clear_errors(digits_data):
    images, manifest = digits_data
    with pytest.raises(PipelineError, match="unknown rule"):
        validate(manifest, images, CLASSES, merged(PARAMS, {"rules": {"nope": "error"}}))
    with pytest.raises(PipelineError, match="must be one of"):
        validate(manifest, images, CLASSES, merged(PARAMS, {"rules": {"min_edge": "fatal"}}))
