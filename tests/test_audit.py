"""The data audit: out-of-fold scoring, confident learning, image checks on real photographs, accepted
exceptions and the report (the stage itself runs in tests/test_own_images_pipeline.py)."""

import re

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_sample_images
from sklearn.linear_model import LogisticRegression

from imgclf.data import quality
from imgclf.evaluate import audit, audit_report, label_issues
from imgclf.io import PipelineError
from imgclf.params import load_section

IMAGE_CHECKS = load_section("audit")["images"]  # the shipped thresholds


def _blobs(n_per_class=120, classes=4, flip_share=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, (classes, 16))
    labels = np.repeat(np.arange(classes), n_per_class)
    features = centres[labels] + rng.normal(0, 1, (len(labels), 16))
    flipped = rng.choice(len(labels), size=int(flip_share * len(labels)), replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, classes, len(flipped))) % classes
    return features, noisy, flipped


def test_out_of_fold_scores_never_come_from_a_model_that_saw_the_label():
    """Random features and random labels: a model fitted on all rows remembers the labels it saw; the
    out-of-fold one cannot, so the given label gets no more than chance."""
    rng = np.random.default_rng(1)
    features, labels = rng.normal(size=(300, 200)), rng.integers(0, 3, 300)
    proba, scored = label_issues.out_of_fold_probabilities(features, labels, 3, folds=5, seed=0)
    in_sample = LogisticRegression(max_iter=1000).fit(features, labels).predict_proba(features)
    assert scored.all()
    assert in_sample[np.arange(300), labels].mean() > 0.9
    assert proba[np.arange(300), labels].mean() < 0.45  # chance is 1/3


def test_flipped_labels_come_first():
    features, noisy, flipped = _blobs()
    proba, _ = label_issues.out_of_fold_probabilities(features, noisy, 4, folds=5, seed=0)
    found = label_issues.find_label_issues(proba, noisy, ["a", "b", "c", "d"])
    quality_of_ranking = label_issues.ranking_quality(found["row"], flipped)
    assert quality_of_ranking["precision_at_k"] >= 0.9 and quality_of_ranking["recall_at_2k"] >= 0.9
    assert list(found["score"]) == sorted(found["score"], reverse=True)
    first = found.iloc[0]
    assert first["suggested"] != first["given"] and first["reason"].startswith("out-of-fold p(")


def test_per_class_thresholds_find_what_the_argmax_misses():
    """Rows where confident learning and "flag when the argmax disagrees" part ways: both are flagged
    (the union), and a row confidently of another class is flagged although its argmax is its label.

    Thresholds: cat = mean(0.95, 0.95, 0.45, 0.55) = 0.725; dog = mean(0.3, 0.3) = 0.3; bird = mean(0.9, 0.9) = 0.9.
    """
    proba = np.array(
        [
            [0.95, 0.05, 0.00],  # cat, clearly
            [0.95, 0.05, 0.00],  # cat, clearly
            [0.45, 0.55, 0.00],  # labelled cat: argmax dog, but dog 0.55 >= 0.3 -> flagged (argmax would too)
            [0.55, 0.40, 0.05],  # labelled cat: argmax cat, but cat 0.55 < 0.725 and dog 0.40 >= 0.3 -> flagged
            [0.60, 0.30, 0.10],  # labelled dog: dog 0.30 >= its 0.3 and cat 0.60 < 0.725 -> its own class: kept
            [0.10, 0.30, 0.60],  # labelled dog: argmax bird, but bird 0.60 < 0.9 -> dog, kept
            [0.05, 0.05, 0.90],  # bird
            [0.05, 0.05, 0.90],  # bird
        ]
    )
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    found = label_issues.find_label_issues(proba, labels, ["cat", "dog", "bird"])
    argmax_flags = np.flatnonzero(proba.argmax(axis=1) != labels)
    assert sorted(argmax_flags) == [2, 4, 5]  # the argmax alone misses row 3
    found = found.set_index("row")
    assert found["suggested"].to_dict() == {2: "dog", 3: "dog", 4: "cat", 5: "bird"}
    assert found.loc[3, "reason"].startswith("out-of-fold p(dog)=0.40 reaches dog's threshold 0.30")
    assert found.loc[5, "reason"].startswith("out-of-fold prediction bird (p=0.60, under its threshold 0.90)")


def test_of_several_confident_classes_the_most_probable_is_suggested():
    # thresholds: a = mean(0.1, 0.9) = 0.5; b = mean(0.6, 0.2) = 0.4; c = mean(0.6, 0.2) = 0.4
    proba = np.array(
        [[0.1, 0.44, 0.46], [0.9, 0.05, 0.05], [0.1, 0.6, 0.3], [0.3, 0.2, 0.5], [0.2, 0.2, 0.6], [0.4, 0.4, 0.2]]
    )
    labels = np.array([0, 0, 1, 1, 2, 2])
    found = label_issues.find_label_issues(proba, labels, ["a", "b", "c"]).set_index("row")
    assert found.loc[0, "suggested"] == "c"  # b (0.44) and c (0.46) both reach 0.4: the larger wins
    assert found["suggested"].to_dict() == {0: "c", 3: "c", 5: "b"}


def test_confident_learning_on_probabilities_worked_by_hand():
    # thresholds: class 0: mean(0.9, 0.8, 0.1) = 0.6; class 1: mean(0.7, 0.9) = 0.8
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7], [0.05, 0.95]])
    labels = np.array([0, 0, 0, 1, 1])
    found = label_issues.find_label_issues(proba, labels, ["cat", "dog"])
    # row 2: labelled cat, p(dog)=0.9 >= 0.8: flagged; row 3: labelled dog, p(dog)=0.7 < 0.8 and p(cat)=0.3 < 0.6: not confident
    assert found["row"].tolist() == [2]
    assert found.loc[0, ["given", "suggested"]].tolist() == ["cat", "dog"] and found.loc[0, "score"] == pytest.approx(
        0.9
    )


def test_a_class_with_one_image_is_left_unscored():
    features, labels, _ = _blobs(n_per_class=20, classes=3, flip_share=0)
    features, labels = np.vstack([features, np.zeros((1, 16))]), np.append(labels, 3)
    proba, scored = label_issues.out_of_fold_probabilities(features, labels, 4, folds=5, seed=0)
    assert not scored[-1] and scored[:-1].all() and np.isnan(proba[-1]).all()
    assert (label_issues.find_label_issues(proba, labels, list("abcd"))["row"] != len(labels) - 1).all()


# -- image checks, on real photographs --------------------------------------------------------------


def _crops(count, seed=0):
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        photo = load_sample_images().images[int(rng.integers(0, 2))]
        top, left = int(rng.integers(0, photo.shape[0] - 240)), int(rng.integers(0, photo.shape[1] - 320))
        crops.append(np.ascontiguousarray(photo[top : top + 240, left : left + 320]))
    return crops


def test_planted_image_issues_are_found_by_their_check_and_clean_photos_pass():
    clean = _crops(60)
    base = clean[0]
    planted = {
        "blurred": cv2.GaussianBlur(base, (0, 0), 6),
        "too_dark": (base * 0.12).astype(np.uint8),
        "too_bright": (230 + base * 0.1).astype(np.uint8),
        "low_information": np.full_like(base, 128),
        "odd_aspect_ratio": cv2.resize(base, (960, 200)),
    }
    images = clean + list(planted.values())
    stats = pd.DataFrame([quality.image_stats(image) for image in images])
    labels = pd.Series([f"class{i % 3}" for i in range(len(images))])
    issues = quality.find_image_issues(stats, labels, IMAGE_CHECKS)
    for offset, name in enumerate(planted):
        assert name in set(issues.loc[issues["row"] == len(clean) + offset, "issue"]), name
    false_alarms = issues[issues["row"] < len(clean)]
    assert false_alarms["row"].nunique() <= 0.02 * len(clean), false_alarms
    row = issues[issues["issue"] == "too_dark"].iloc[0]
    assert row["value"] < row["threshold"] == IMAGE_CHECKS["dark_below"]


def test_a_duplicate_under_two_labels_is_flagged_and_unlabelled_images_conflict_with_nothing():
    a, b = _crops(2, seed=3)
    hashes = pd.Series([quality.image_stats(image)["phash"] for image in (a, a, b, b, a)])
    labels = ["cat", "dog", "cat", "cat", ""]  # a under two labels; b twice under one; a once unlabelled
    assert quality.conflicting_duplicates(hashes, labels, 0) == [(0, 0), (1, 0)]
    assert quality.conflicting_duplicates(hashes, labels, 4) == [(0, 0), (1, 0)]


# -- accepted exceptions and the report --------------------------------------------------------------


def test_accepted_findings_are_skipped_by_file_or_by_issue(tmp_path):
    accepted_file = tmp_path / "audit_accepted.csv"
    assert audit.read_accepted(accepted_file).empty  # none yet: nothing accepted
    accepted_file.write_text("source,issue\ntrain/cat/1.jpg,\ntrain/dog/2.jpg,blurred\n")
    accepted = audit.read_accepted(accepted_file)
    images = pd.DataFrame(
        {
            "source": ["train/cat/1.jpg", "train/dog/2.jpg", "train/dog/2.jpg"],
            "issue": ["too_dark", "blurred", "too_dark"],
        }
    )
    kept, skipped = audit.drop_accepted(images, images["issue"], accepted)
    assert skipped == 2 and kept.to_dict("records") == [{"source": "train/dog/2.jpg", "issue": "too_dark"}]
    labels_found = pd.DataFrame({"source": ["train/cat/1.jpg", "train/dog/2.jpg"]})
    kept, skipped = audit.drop_accepted(labels_found, audit.LABEL_ISSUE, accepted)
    assert skipped == 1 and kept["source"].tolist() == ["train/dog/2.jpg"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("file,why\na.jpg,fine\n", "no 'source' column"),
        ("source,issue\na.jpg,blury\n", "unknown issue 'blury'"),
        ("source,issue\na.jpg,label\n,blurred\n", "row 3 has no source"),
        (b"source,issue\n\xff\xfe,label\n", "not a readable CSV"),
    ],
)
def test_a_bad_accepted_file_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "audit_accepted.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(PipelineError, match=message):
        audit.read_accepted(path)


def test_an_accepted_file_from_a_spreadsheet_keeps_its_columns(tmp_path):
    """A trailing comma on every row (what spreadsheets write) must not shift source into the index."""
    path = tmp_path / "audit_accepted.csv"
    path.write_text("source,issue,\ntrain/a.jpg,label,\n")
    assert audit.read_accepted(path).to_dict("records") == [{"source": "train/a.jpg", "issue": "label"}]
    with pytest.raises(PipelineError, match="is not a file"):
        audit.read_accepted(tmp_path)


def test_the_report_shows_given_and_suggested_labels_and_loads_nothing_from_outside():
    labels_found = pd.DataFrame(
        {"source": ["train/<cat>/1.jpg"], "split": ["train"], "given_label": ["cat"], "suggested_label": ["dog"],
         "score": [0.97], "reason": ["out-of-fold p(dog)=0.95"]}
    )  # fmt: skip
    images_found = pd.DataFrame(
        {"source": ["train/dog/2.jpg"], "issue": ["blurred"], "value": [1.5], "threshold": [20.0]}
    )
    summary = audit.summary(labels_found, images_found, audited=100, measured=120, accepted=0, out_of_fold_accuracy=0.9)
    assert summary["label_issues"] == 1 and summary["blurred"] == 1 and audit.flagged_share(summary) == 0.01
    assert all(isinstance(value, int | float) for value in summary.values())  # flat numbers, for MLflow too
    assert audit.headline(summary) == {"label_issues": 1, "images_with_issues": 1, "oof_accuracy": 0.9}
    thumbs = {"train/<cat>/1.jpg": audit_report.thumbnail_uri(_crops(1)[0])}
    page = audit_report.render(summary, labels_found, images_found, thumbs, "data/raw/audit_accepted.csv", 25)
    assert "train/&lt;cat&gt;/1.jpg" in page and "<cat>" not in page  # escaped
    assert re.search(r"class='given'>cat<.*class='suggested'>dog<", page, flags=re.S)
    assert page.count("data:image/png;base64,") == 1
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)  # no request leaves the page


def test_no_finding_at_all_is_an_empty_table_not_an_error():
    stats = pd.DataFrame([quality.image_stats(image) for image in _crops(5, seed=7)])
    issues = quality.find_image_issues(stats, pd.Series(["a", "b", "c", "d", "e"]), IMAGE_CHECKS)
    assert issues.empty and issues["row"].dtype == np.int64
    empty = quality.find_image_issues(stats.iloc[:0], pd.Series([], dtype=str), IMAGE_CHECKS)
    assert empty.empty and list(empty.columns) == quality.COLUMNS


def test_a_weak_network_is_said_to_be_the_likely_cause():
    found = pd.DataFrame({"source": [f"f{i}" for i in range(40)]})
    weak = audit.summary(found, pd.DataFrame(columns=["source", "issue"]), 100, 100, 0, out_of_fold_accuracy=0.41)
    assert "hardly separate the classes" in audit.weak_features_warning(weak)
    page = audit_report.render(weak, found.assign(split="train", given_label="a", suggested_label="b", score=0.9, reason=""),
                               pd.DataFrame(columns=["source", "issue", "value", "threshold"]), {}, "accepted.csv", 5)  # fmt: skip
    assert "Read with care" in page
    fine = audit.summary(
        found.head(3), pd.DataFrame(columns=["source", "issue"]), 100, 100, 0, out_of_fold_accuracy=0.95
    )
    assert audit.weak_features_warning(fine) is None
