"""Promotion rules: candidate always, champion only for a real gain on the same test images."""

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from imgclf.ship.registry import CANDIDATE, CHAMPION, ScoredModel, decide, promote

N = 400
ACTUAL = np.array([f"c{i % 4}" for i in range(N)])


def _predicted(right: int) -> np.ndarray:
    """The first ``right`` images correct, the rest wrong (so a model right on more is right on a superset)."""
    wrong = np.array([f"c{(i + 1) % 4}" for i in range(N)])
    return np.where(np.arange(N) < right, ACTUAL, wrong)


def _model(version: str, right: int, digest: str = "d1") -> ScoredModel:
    return ScoredModel(version, f"run{version}", digest, ACTUAL, _predicted(right))


def test_the_first_model_becomes_champion():
    assert decide(_model("1", 300), None, 0.0, 0.05).promote


def test_a_clear_gain_on_the_same_images_promotes():
    decision = decide(_model("2", 340), _model("1", 300), 0.0, 0.05)
    assert decision.promote and decision.comparison["gained"] == 0 and decision.comparison["lost"] == 40
    assert "+0.1000" in decision.reason


def test_a_gain_within_noise_or_below_min_gain_does_not_promote():
    assert not decide(_model("2", 303), _model("1", 300), 0.0, 0.05).promote  # 3 images: p = 0.125
    assert not decide(_model("2", 340), _model("1", 300), 0.2, 0.05).promote  # real, but under min_gain
    assert not decide(_model("2", 280), _model("1", 300), 0.0, 0.05).promote  # worse


def test_models_tested_on_other_data_are_not_compared():
    decision = decide(_model("2", 400, digest="d2"), _model("1", 300), 0.0, 0.05)
    assert not decision.promote and "other data" in decision.reason


def _register(client, name: str, right: int, tmp_path, digest: str = "d1") -> str:
    """A run tested on ``digest`` with its eval/predictions.csv, registered as a new version of ``name``."""
    with mlflow.start_run() as run:
        dataset = mlflow.data.from_numpy(np.zeros((N, 2)), targets=np.zeros(N), name="test", digest=digest)
        mlflow.log_input(dataset, context="testing")
        table = tmp_path / "predictions.csv"
        pd.DataFrame({"actual": ACTUAL, "predicted": _predicted(right)}).to_csv(table, index=False)
        mlflow.log_artifact(str(table), "eval")
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    return str(client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id).version)


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = MlflowClient().create_experiment("t", artifact_location=(tmp_path / "mlruns").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield MlflowClient()
    mlflow.set_tracking_uri(None)


def _aliases(client, name):
    return {alias: str(client.get_model_version_by_alias(name, alias).version) for alias in (CANDIDATE, CHAMPION)}


def test_promotion_moves_the_aliases_in_the_registry(client, tmp_path):
    def table(right):
        return pd.DataFrame({"actual": ACTUAL, "predicted": _predicted(right)})

    first = _register(client, "m", 300, tmp_path)
    report = promote(client, "m", first, table(300), 0.0, 0.05)
    assert report["promote"] and report["champion_before"] is None
    assert _aliases(client, "m") == {CANDIDATE: "1", CHAMPION: "1"}

    better = _register(client, "m", 360, tmp_path)
    report = promote(client, "m", better, table(360), 0.0, 0.05)
    assert report["promote"] and report["champion_before"] == "1" and report["champion_after"] == "2"
    assert _aliases(client, "m") == {CANDIDATE: "2", CHAMPION: "2"}

    worse = _register(client, "m", 330, tmp_path)
    report = promote(client, "m", worse, table(330), 0.0, 0.05)
    assert not report["promote"] and report["champion_after"] == "2"
    assert report["comparison"]["lost"] == 0 and report["comparison"]["gained"] == 30
    assert _aliases(client, "m") == {CANDIDATE: "3", CHAMPION: "2"}


def test_a_rerun_for_an_older_version_moves_no_alias_back(client, tmp_path):
    def table(right):
        return pd.DataFrame({"actual": ACTUAL, "predicted": _predicted(right)})

    first = _register(client, "m", 300, tmp_path)
    promote(client, "m", first, table(300), 0.0, 0.05)
    second = _register(client, "m", 360, tmp_path)
    promote(client, "m", second, table(360), 0.0, 0.05)
    report = promote(client, "m", first, table(300), 0.0, 0.05)  # e.g. evaluate reran for version 1
    assert not report["promote"]
    assert _aliases(client, "m") == {CANDIDATE: "2", CHAMPION: "2"}


def test_a_model_not_fit_to_ship_gets_no_alias_and_the_champion_stays(client, tmp_path):
    from imgclf.ship.registry import refuse

    first = _register(client, "m", 300, tmp_path)
    promote(client, "m", first, pd.DataFrame({"actual": ACTUAL, "predicted": _predicted(300)}), 0.0, 0.05)
    unfit = _register(client, "m", 360, tmp_path)
    report = refuse(client, "m", unfit, "test accuracy 0.2000 on 150 images is not above chance")
    assert not report["promote"] and report["reason"].startswith("not fit to ship: test accuracy 0.2000")
    assert report["champion_before"] == report["champion_after"] == "1"
    assert _aliases(client, "m") == {CANDIDATE: "1", CHAMPION: "1"}
    assert client.get_model_version("m", unfit).tags["fit_to_ship"] == "false"


def test_a_version_whose_shipped_variant_is_not_blessed_is_a_candidate_never_champion(client, tmp_path):
    def table(right):
        return pd.DataFrame({"actual": ACTUAL, "predicted": _predicted(right)})

    first = _register(client, "m", 300, tmp_path)
    promote(client, "m", first, table(300), 0.0, 0.05)
    better = _register(client, "m", 360, tmp_path)  # a clear gain: champion, were its int8 copy blessed
    report = promote(client, "m", better, table(360), 0.0, 0.05, blocked="its shipped variant is not blessed")
    assert not report["promote"] and report["champion_after"] == "1"
    assert report["reason"].startswith("not champion: its shipped variant is not blessed (otherwise: ")
    assert report["comparison"]["lost"] + report["comparison"]["gained"] == 60  # still compared, and recorded
    assert _aliases(client, "m") == {CANDIDATE: "2", CHAMPION: "1"}
    assert client.get_model_version("m", better).tags["blessed"] == "false"


def test_a_splits_digest_follows_its_own_images_not_the_other_splits(tmp_path):
    """New training photos (a feedback export) must leave the test split's digest alone, or promote
    could never pair the retrained model with the champion."""
    from imgclf.team.tracking import split_digest

    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "x-000.npy").write_bytes(split.encode() * 100)
    test_before = split_digest(tmp_path / "test")
    (tmp_path / "train" / "x-001.npy").write_bytes(b"new training images")
    assert split_digest(tmp_path / "test") == test_before
    (tmp_path / "test" / "x-000.npy").write_bytes(b"other test images")
    assert split_digest(tmp_path / "test") != test_before
    assert split_digest(tmp_path / "missing") is None


def _quadrant_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8x8 images whose class is the bright quadrant: a task two hand-set networks can be told apart on."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, count)
    images = rng.integers(0, 60, (count, 8, 8, 1)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        row, column = divmod(int(label), 2)
        image[row * 4 : row * 4 + 4, column * 4 : column * 4 + 4] += 150
    return images, labels


def _shipped_file(folder, swap: bool):
    """A float32 .tflite of a network summing each quadrant (``swap``: classes 2 and 3 confused), as
    export-tflite writes it (two named outputs)."""
    import keras

    from imgclf.paths import Layout
    from imgclf.ship import export

    inputs = keras.Input((8, 8, 1))
    flat = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = keras.layers.Dense(4, activation="softmax")(flat)
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((64, 4), np.float32)
    for label in range(4):
        row, column = divmod(label, 2)
        target = {2: 3, 3: 2}.get(label, label) if swap else label
        for r in range(row * 4, row * 4 + 4):
            for c in range(column * 4, column * 4 + 4):
                kernel[r * 8 + c, target] = 1.0
    model.layers[-1].set_weights([kernel, np.zeros(4, np.float32)])
    return export.export_all(export.with_features(model), ["float32"], None, Layout(folder))["float32"]


def test_a_champion_tested_on_other_images_is_scored_again_with_its_shipped_file(client, tmp_path):
    """The test folder changed since the champion was trained: both shipped files run on the new test
    images, and the paired test decides; without its file, the champion stays and the report says why."""
    import json

    from imgclf.ship.registry import TestImages

    labels = ["c0", "c1", "c2", "c3"]
    champion_file = _shipped_file(tmp_path / "champion", swap=True)  # right on about half
    candidate_file = _shipped_file(tmp_path / "candidate", swap=False)  # right on all
    card = tmp_path / "model_card.json"
    card.write_text(json.dumps({"labels": labels, "input": {"shape": [1, 8, 8, 1]}}))
    old = _register(client, "m", 300, tmp_path, digest="old-test-folder")
    with mlflow.start_run(run_id=client.get_model_version("m", old).run_id):
        mlflow.log_artifact(str(champion_file), "tflite")
        mlflow.log_artifact(str(card), "tflite")
    promote(client, "m", old, pd.DataFrame({"actual": ACTUAL, "predicted": _predicted(300)}), 0.0, 0.05)

    images, y = _quadrant_images(200, seed=3)
    test = TestImages(images, np.asarray(labels)[y], labels, candidate_file, "float32")
    new = _register(client, "m", 400, tmp_path, digest="new-test-folder")
    report = promote(client, "m", new, pd.DataFrame({"actual": ACTUAL, "predicted": ACTUAL}), 0.0, 0.05, test=test)
    assert report["rescored"] and report["promote"] and report["champion_after"] == new
    assert report["comparison"]["samples"] == 200 and report["comparison"]["gained"] == 0
    assert report["comparison"]["lost"] == int(np.isin(y, [2, 3]).sum())  # the champion's swapped classes
    assert "scored again on these 200 test images" in report["reason"]

    # a champion whose run has no shipped file (exported before, or artifacts deleted): not compared
    newer = _register(client, "m", 400, tmp_path, digest="newer-test-folder")
    report = promote(client, "m", newer, pd.DataFrame({"actual": ACTUAL, "predicted": ACTUAL}), 0.0, 0.05, test=test)
    assert not report["rescored"] and not report["promote"] and report["champion_after"] == new
    assert "could not be scored on these test images: its run has no tflite/model_float32.tflite" in report["reason"]

    # another image size, or other classes: not compared either, and said so
    with mlflow.start_run(run_id=client.get_model_version("m", new).run_id):
        mlflow.log_artifact(str(candidate_file), "tflite")
        mlflow.log_artifact(str(card), "tflite")
    smaller = TestImages(images[:, :4, :4], test.actual, labels, candidate_file, "float32")
    report = promote(client, "m", newer, pd.DataFrame({"actual": ACTUAL, "predicted": ACTUAL}), 0.0, 0.05, test=smaller)
    assert not report["promote"] and "it takes (8, 8, 1) images, these test images are (4, 4, 1)" in report["reason"]
    renamed = TestImages(images, test.actual, ["a", "b", "c", "d"], candidate_file, "float32")
    report = promote(client, "m", newer, pd.DataFrame({"actual": ACTUAL, "predicted": ACTUAL}), 0.0, 0.05, test=renamed)
    assert not report["promote"] and "it answers other classes (c0, c1, c2, c3)" in report["reason"]

    # a file the runtime cannot run (damaged in the store): a reason too, not a traceback
    broken = tmp_path / "broken" / "model_float32.tflite"
    broken.parent.mkdir()
    broken.write_bytes(b"not a flatbuffer" * 64)
    with mlflow.start_run(run_id=client.get_model_version("m", new).run_id):
        mlflow.log_artifact(str(broken), "tflite")  # replaces the good one
    report = promote(client, "m", newer, pd.DataFrame({"actual": ACTUAL, "predicted": ACTUAL}), 0.0, 0.05, test=test)
    assert not report["promote"] and "its tflite/model_float32.tflite does not run here" in report["reason"]
    assert _aliases(client, "m") == {CANDIDATE: newer, CHAMPION: new}
