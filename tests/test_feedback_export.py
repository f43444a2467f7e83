"""python -m imgclf.feedback export: reviewed, captured images into a class-folder dataset, new files only,
with a manifest beside the folder; what cannot be exported is said, not lost."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from imgclf.data.folders import list_folder
from imgclf.ship.feedback import export, main, manifest_path
from imgclf.ship.prediction_log import PredictionLog

FOLDER_PARAMS = {"classes": None, "limit": None, "csv": {"image_column": None, "label_column": None,
                                                         "train_file": None, "test_file": None}}  # fmt: skip


def _png(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


def _answer(label: str, i: int) -> dict:
    return {"file": f"{i}.png", "label": label, "probability": 0.7, "unknown": False, "unknown_score": 0.1}


def test_reviewed_images_land_in_their_class_folders_once(tmp_path, capsys):
    photos = tmp_path / "raw" / "photos"
    for split, label in (("train", "cat"), ("train", "dog"), ("test", "cat")):
        (photos / split / label).mkdir(parents=True)
        (photos / split / label / "a.png").write_bytes(_png(hash((split, label)) % 1000))
    log = PredictionLog(tmp_path / "logs" / "p.db", capture="all", capture_max_mb=1)
    answers = [_answer("cat", 0), _answer("cat", 1), _answer("dog", 2), _answer("dog", 3)]
    log.append(answers, {i: _png(100 + i) for i in range(4)}, "models/m.tflite", "int8")
    log.feedback(answers[0]["id"], "dog")  # corrected
    log.feedback(answers[1]["id"], "cat")  # confirmed
    log.feedback(answers[2]["id"], "cat")
    log.feedback(answers[2]["id"], "dog")  # changed their mind: the latest word counts
    # answers[3]: no feedback, not exported

    new, skipped = export(log.path, photos)
    assert skipped == [] and len(new) == 3
    assert sorted(new["file"]) == sorted(
        [f"train/dog/feedback-{p}.png" for p in new[new["label"] == "dog"]["sha256"].str[:16]]
        + [f"train/cat/feedback-{p}.png" for p in new[new["label"] == "cat"]["sha256"].str[:16]]
    )
    for row in new.itertuples():
        assert (photos / row.file).read_bytes() in [_png(100 + i) for i in range(3)]
    assert dict(zip(new["prediction_id"], new["outcome"], strict=True)) == {
        answers[0]["id"]: "corrected", answers[1]["id"]: "correct", answers[2]["id"]: "correct"}  # fmt: skip
    assert not list((photos / "test").rglob("feedback-*"))  # the test images stay as they were
    manifest = pd.read_csv(manifest_path(photos))
    assert manifest_path(photos).parent == photos.parent and len(manifest) == 3  # beside, not inside

    listing = list_folder(photos, FOLDER_PARAMS)  # ingest sees them as training images of their class
    train = listing.rows[listing.rows["split"] == "train"]
    assert (train["label"] == "dog").sum() == 3 and (train["label"] == "cat").sum() == 2

    again, _ = export(log.path, photos)  # nothing new: nothing written, nothing overwritten
    assert again.empty and len(pd.read_csv(manifest_path(photos))) == 3

    assert main(["export", str(photos), "--log", str(log.path)]) == 0
    assert "0 image(s) exported" in capsys.readouterr().out


def test_what_cannot_be_exported_is_said(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    log = PredictionLog(tmp_path / "p.db", capture="unknown")
    answers = [_answer("cat", 0), _answer("cat", 1)]
    answers[0]["unknown"] = True  # kept
    log.append(answers, {0: _png(1), 1: _png(2)}, "m", "int8")  # the second is not kept (capture: unknown)
    log.feedback(answers[0]["id"], "cat")
    log.feedback(answers[1]["id"], "cat")
    new, skipped = export(log.path, photos)
    assert len(new) == 1 and len(skipped) == 1 and "was not kept" in skipped[0]
    assert main(["export", str(tmp_path / "no" / "where"), "--log", str(log.path)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "p.db"), "--log", str(log.path)]) == 2  # a file, not a folder
    assert f"{tmp_path / 'p.db'} is not a folder" in capsys.readouterr().err
    assert main(["export", str(photos), "--log", str(tmp_path / "none.db")]) == 2
    table = tmp_path / "table"  # a CSV label table: ingest would never see class folders in it
    table.mkdir()
    (table / "labels.csv").write_text("image,label\n")
    assert main(["export", str(table), "--log", str(log.path)]) == 2
    assert "set ingest.extra" in capsys.readouterr().err and list(table.iterdir()) == [table / "labels.csv"]


def test_fashion_mnist_feedback_goes_to_a_folder_of_its_own_that_ingest_extra_trains_on(
    tmp_path, digits_idx_dir, capsys, monkeypatch
):
    from imgclf.data.ingest import ingest, read_ingested
    from imgclf.paths import Layout
    from imgclf.ship.feedback import next_step
    from tests.conftest import shipped

    log = PredictionLog(tmp_path / "p.db", capture="all")
    answers = [_answer("Shirt", 0), _answer("Bag", 1)]
    log.append(answers, {0: _png(1), 1: _png(2)}, "m", "int8")
    log.feedback(answers[0]["id"], "T-shirt/top")  # a class name no folder can hold as it is
    log.feedback(answers[1]["id"], "Bag")
    feedback = tmp_path / "raw" / "feedback"
    feedback.parent.mkdir()
    new, skipped = export(log.path, feedback)  # a new folder: made for it
    assert skipped == [] and sorted(new["file"].str.split("/").str[0]) == ["Bag", "T-shirt_top"]
    assert set(new["label"]) == {"T-shirt/top", "Bag"}  # the manifest keeps the class names

    layout = Layout(tmp_path / "repo")
    ingest(shipped("ingest", fashion_mnist_dir=str(digits_idx_dir), extra=str(feedback)), layout)
    _, manifest, _ = read_ingested(layout)
    extra = manifest[manifest["id"].str.startswith("extra:")]
    assert sorted(extra["label"]) == ["Bag", "T-shirt/top"] and set(extra["split"]) == {"train"}

    fmnist = shipped("ingest")
    assert next_step(feedback, fmnist) == (
        f"next: set ingest.extra: {feedback} in params.yaml, then dvc add {feedback} && dvc repro"
    )
    assert next_step(feedback, fmnist | {"extra": str(feedback)}) == f"next: dvc add {feedback} && dvc repro"
    assert "(now data/raw/x)" in next_step(feedback, fmnist | {"extra": "data/raw/x"})
