"""`dvc repro` end to end on generated photo datasets in both folder layouts, predict split included."""

import json

import numpy as np
import pandas as pd
import pytest

from imgclf.io import read_json
from imgclf.paths import layout
from tests.conftest import run, set_params
from tests.photos import CLASSES, class_folder_dataset, csv_dataset, save

pytestmark = pytest.mark.slow
STAGES = ("ingest", "validate", "preprocess", "augment", "train", "evaluate", "audit", "export-tflite", "predict")


def _own_params(root, source):
    set_params(
        root,
        ingest={"source": str(source)},
        validate={"min_edge": 64, "min_per_class": 10, "near_duplicate_distance": 4},
        preprocess={"image_size": 32, "color_mode": "rgb", "val_fraction": 0.15, "test_fraction": 0.15},
        train={"epochs": 2, "batch_size": 32},
        predict={"allow_unfit": True},  # two epochs on 90 shapes: a pipeline test, not a model to ship
        promote={"allow_unfit": True},
        export={
            "variants": ["float32", "int8"],
            "calibration_samples": 50,
            "latency_runs": 5,
            "max_accuracy_drop": 1.0,
        },
    )


def _repro(root):
    result = run(["dvc", "repro"], root)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in result.stdout, stage
    assert "Running stage" not in run(["dvc", "repro"], root).stdout  # nothing changed: nothing runs
    return layout(root)


def test_csv_layout_end_to_end_with_predictions_for_the_unlabelled_test_csv(repo_copy, tmp_path):
    source = csv_dataset(tmp_path / "shapes", per_class=30, unlabelled=6)
    (source / "test" / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    test_csv = source / "test" / "test.csv"
    test_csv.write_text(test_csv.read_text() + "corrupt.jpg\n")
    _own_params(repo_copy, source)
    paths = _repro(repo_copy)

    validation = read_json(paths.validation_report)
    assert validation["rows_in"] == 90 + 7 and validation["quarantined_by_rule"] == {"readable": 1}
    assert validation["splits"] == {"predict": 6, "train": 90}
    meta = read_json(paths.preprocessed_meta)
    assert meta["input_shape"] == [32, 32, 3] and meta["counts"]["test"] == 14 and meta["counts"]["predict"] == 6
    assert paths.labels.read_text().splitlines() == list(CLASSES)
    assert 0 <= read_json(paths.metrics)["accuracy"] <= 1

    predictions = pd.read_csv(paths.predict_output, keep_default_na=False)
    assert predictions["image"].tolist() == pd.read_csv(test_csv)["image"].tolist()  # every row, CSV order
    good = predictions[predictions["error"] == ""]
    assert len(good) == 6 and set(good["predicted_label"]) <= set(CLASSES)
    assert np.allclose(good[[f"top{k}_probability" for k in (1, 2, 3)]].astype(float).sum(axis=1), 1, atol=0.02)
    bad = predictions.set_index("image").loc["corrupt.jpg"]
    assert bad["predicted_label"] == "" and bad["error"].startswith("readable:")


def test_class_folder_layout_end_to_end_with_labelled_test_and_loose_files(repo_copy, tmp_path):
    source = class_folder_dataset(tmp_path / "shapes", per_class=30, test_per_class=6, seed=1)
    rng = np.random.default_rng(5)
    from tests.photos import random_photo

    for i in range(2):
        save(source / "test" / f"loose_{i}.jpg", random_photo(CLASSES[i], rng))
    _own_params(repo_copy, source)
    paths = _repro(repo_copy)

    validation = read_json(paths.validation_report)
    assert validation["rows_in"] == 90 + 18 + 2 == validation["rows_kept"]
    assert validation["formats"] == {"JPEG": 56, "PNG": 54}
    metrics = read_json(paths.eval_detail)["test"]  # per class: the detail
    assert sum(metrics["per_class"][c]["support"] for c in CLASSES) == 18  # the folder's own test split
    predictions = pd.read_csv(paths.predict_output, keep_default_na=False)
    assert predictions["image"].tolist() == ["test/loose_0.jpg", "test/loose_1.jpg"]
    assert (predictions["error"] == "").all()
    export = json.loads(paths.export_report.read_text())
    assert set(export["variants"]) == {"float32", "int8"}

    # the audit: every labelled image scored, findings named by the user's own file names
    summary = read_json(paths.audit_summary)  # the DVC metric: a headline of three numbers
    assert set(summary) == {"label_issues", "images_with_issues", "oof_accuracy"}
    detail = read_json(paths.audit_detail)
    assert detail["audited_images"] == 90 and detail["measured_images"] == 110
    assert {key: detail[key] for key in summary} == summary
    found = pd.read_csv(paths.label_issues, keep_default_na=False)
    assert list(found.columns) == ["source", "split", "given_label", "suggested_label", "score", "reason"]
    assert len(found) == summary["label_issues"] and set(found["split"]) <= {"train", "val"}
    assert all(source.startswith("train/") for source in found["source"])
    assert (found["given_label"] != found["suggested_label"]).all()
    page = paths.audit_report.read_text()
    assert "Likely label errors" in page and "http://" not in page and "https://" not in page

    # a finding accepted beside the photos: the audit reruns without it, nothing else retrains
    assert len(found) > 0  # two epochs on 90 shapes: a weak network, so findings (and the warning) are certain
    if len(found):
        accepted = repo_copy / "data" / "raw" / "audit_accepted.csv"
        accepted.parent.mkdir(parents=True, exist_ok=True)
        accepted.write_text(f"source,issue\n{found['source'].iloc[0]},label\n")
        rerun = run(["dvc", "repro"], repo_copy).stdout
        assert "Running stage 'audit'" in rerun and "Running stage 'train'" not in rerun
        assert read_json(paths.audit_summary)["label_issues"] == summary["label_issues"] - 1
