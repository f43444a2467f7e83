"""The HTTP service (imgclf.ship.serve): its API, bad input of every kind, the ONNX variant, the registry,
the page in a real browser, and the slim set of requirements it is shipped with.

Tests marked ``needs_pipeline`` use the pipeline's own environment (TensorFlow, MLflow, pandas,
Playwright); the others also run in a virtual environment made from requirements-serve.txt alone
(``test_the_service_runs_from_requirements_serve_alone``), which is why this file imports nothing
from tests.conftest and builds its model only when ``IMGCLF_TEST_MODEL_DIR`` does not hand one over.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from imgclf.ship.serve import ModelError, Settings, create_app

needs_pipeline = pytest.mark.needs_pipeline
LABELS = [str(d) for d in range(10)]
UNKNOWN = {"detector": "mahalanobis", "unknown_rate": 0.04, "min_images": 100, "folds": 5, "seed": 0, "knn_k": 10,
           "knn_reference": 2000}  # fmt: skip


def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as 28x28 uint8 (a copy ships in the model folder for the slim run)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images * (255 / 16)).round().astype(np.uint8)
    big = np.stack([cv2.resize(image, (28, 28), interpolation=cv2.INTER_NEAREST) for image in images])
    return big[..., None], data.target.astype(int)


def build_model_dir(folder: Path) -> Path:
    """A small CNN trained on digits, exported as int8 .tflite and ONNX with its model card: the files
    the export stage writes, in the same layout (models/tflite, models/onnx)."""
    import keras

    from imgclf.paths import Layout
    from imgclf.ship import export
    from imgclf.train.models import build_model

    x, y = _digit_images()
    keras.utils.set_random_seed(0)
    params = {
        "simple_cnn": {
            "filters": [8, 16],
            "stem_size": 64,
            "final_size": 7,
            "max_width": 64,
            "pooling": "flatten",
            "flatten_max_size": 32,
            "dense": 32,
            "dropout": [0.1, 0.1],
            "l2": 0.0,
        }
    }
    model = build_model("simple_cnn", (28, 28, 1), 10, params)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:1500], y[:1500], epochs=3, batch_size=64, verbose=0)
    paths = Layout(folder)
    files = export.export_all(export.with_features(model), ["float32", "int8", "onnx"], x[:200], paths)
    unknown = {"variants": {}}
    for variant, path in files.items():  # as export-tflite does: fitted on images the model did not train on
        train, val = (x[:1500], y[:1500]), (x[1530:], y[1530:])
        detector, result = export.fit_unknown_detector(
            path, train, val, x[1500:1530], UNKNOWN, export.last_layer(model)
        )
        detector.save(paths.unknown_detector(variant))
        unknown["variants"][variant] = result
    meta = {"class_names": LABELS, "input_shape": [28, 28, 1], "color_mode": "grayscale", "image_size": 28}
    paths.tflite_meta.write_text(json.dumps(export.model_card(meta, files, paths.tflite, unknown=unknown)))
    np.save(folder / "digits_x.npy", x[1500:1530])
    return folder


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    given = os.environ.get("IMGCLF_TEST_MODEL_DIR")
    return Path(given) if given else build_model_dir(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="session")
def pngs(model_dir) -> list[bytes]:
    """Real digit images as PNG files, as a user would upload them."""
    return [cv2.imencode(".png", image)[1].tobytes() for image in np.load(model_dir / "digits_x.npy")]


def client_for(model_dir: Path, variant: str = "int8", **limits) -> TestClient:
    model = model_dir / ("models/onnx/model.onnx" if variant == "onnx" else f"models/tflite/model_{variant}.tflite")
    return TestClient(create_app(Settings(model=str(model), workers=2, **limits)))


@pytest.fixture(scope="module")
def client(model_dir):
    with client_for(model_dir) as test_client:  # `with` runs start-up: the model loads
        yield test_client


def files(*named: tuple[str, bytes]) -> list:
    return [("file", (name, data, "application/octet-stream")) for name, data in named]


def test_health_model_and_a_prediction_per_file_in_upload_order(client, pngs):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert info["labels"] == LABELS and info["variant"] == "int8"
    assert info["input"] == {"image_size": 28, "color_mode": "grayscale", "dtype": "uint8"}
    response = client.post("/v1/predict", files=files(*[(f"d{i}.png", data) for i, data in enumerate(pngs[:5])]))
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["file"] for p in predictions] == [f"d{i}.png" for i in range(5)]
    for p in predictions:
        assert p["label"] == p["top_k"][0]["label"] and len(p["top_k"]) == 3
        assert p["probability"] == p["top_k"][0]["probability"] >= p["top_k"][1]["probability"]
        assert isinstance(p["unknown"], bool) and p["unknown_score"] >= 0


def _no_digit_pngs() -> list[bytes]:
    """Images of no class: uniform noise, a colour photograph's crops, flat grey, a checkerboard."""
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(3)
    photo = load_sample_image("china.jpg")
    images = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(4)]
    images += [photo[y : y + 160, x : x + 160] for y, x in ((0, 0), (200, 300), (250, 50))]
    images += [np.full((28, 28), 128, np.uint8), (np.indices((28, 28)).sum(0) % 2 * 255).astype(np.uint8)]
    return [cv2.imencode(".png", image)[1].tobytes() for image in images]


def test_answers_are_logged_with_an_id_and_feedback_is_recorded_and_counted(model_dir, pngs, tmp_path):
    from imgclf.ship.prediction_log import read

    log = tmp_path / "logs" / "predictions.db"
    model = str(model_dir / "models/tflite/model_int8.tflite")
    with TestClient(create_app(Settings(model=model, workers=2, log=str(log), capture="all"))) as served:
        sent = files(("a.png", pngs[0]), ("b.png", pngs[1]), ("notes.txt", b"shopping list"))
        predictions = served.post("/v1/predict", files=sent).json()["predictions"]
        ids = [p.get("id") for p in predictions]
        assert ids[0] and ids[1] and ids[0] != ids[1] and ids[2] is None  # a file with an error has no answer
        rows = read(log, "SELECT id, file, label, variant, captured FROM predictions ORDER BY rowid")
        assert [r[:4] for r in rows] == [(ids[0], "a.png", predictions[0]["label"], "int8"),
                                         (ids[1], "b.png", predictions[1]["label"], "int8")]  # fmt: skip
        assert all((log.parent / r[4]).read_bytes() in (pngs[0], pngs[1]) for r in rows)  # capture: all
        other = next(label for label in LABELS if label != predictions[1]["label"])
        confirmed = served.post("/v1/feedback", json={"id": ids[0], "label": predictions[0]["label"]})
        corrected = served.post("/v1/feedback", json={"id": ids[1], "label": other})
        assert confirmed.json()["outcome"] == "correct" and corrected.json()["outcome"] == "corrected"
        assert served.post("/v1/feedback", json={"id": "nope", "label": "3"}).status_code == 404
        wrong_label = served.post("/v1/feedback", json={"id": ids[0], "label": "cat"})
        assert (
            wrong_label.status_code == 422
            and "'cat' is not one of the model's 10 classes" in wrong_label.json()["detail"]
        )
        assert (
            served.post("/v1/feedback", content=b"{not json", headers={"content-type": "application/json"}).status_code
            == 422
        )
        assert served.post("/v1/feedback", json={"label": "3"}).status_code == 422
        assert read(log, "SELECT prediction_id, label, outcome FROM feedback ORDER BY id") == [
            (ids[0], predictions[0]["label"], "correct"), (ids[1], other, "corrected")]  # fmt: skip
        metrics = served.get("/metrics").text
        assert 'imgclf_feedback_total{outcome="corrected"} 1.0' in metrics
        assert "imgclf_feedback_accuracy 0.5" in metrics
        label, unknown = predictions[0]["label"], str(predictions[0]["unknown"]).lower()
        assert f'imgclf_predictions_total{{label="{label}",unknown="{unknown}"}}' in metrics


def test_a_log_that_fails_still_answers_without_ids_and_big_feedback_is_413(model_dir, pngs, tmp_path):
    import sqlite3

    model = str(model_dir / "models/tflite/model_int8.tflite")
    with TestClient(create_app(Settings(model=model, log=str(tmp_path / "p.db")))) as served:

        def full_disk(*args):
            raise sqlite3.OperationalError("database or disk is full")

        served.app.state.log.append = full_disk
        prediction = served.post("/v1/predict", files=files(("a.png", pngs[0]))).json()["predictions"][0]
        assert prediction["label"] in LABELS and "id" not in prediction
        huge = served.post("/v1/feedback", content=b'{"id": "' + b"x" * 10_000 + b'"}')
        assert huge.status_code == 413
        deep = served.post("/v1/feedback", content=b"[" * 2000 + b"]" * 2000)  # 4,000 bytes: read, then refused
        assert deep.status_code == 422


def test_feedback_needs_the_log(client, pngs):
    response = client.post("/v1/feedback", json={"id": "x", "label": "3"})
    assert response.status_code == 503 and "serve.log" in response.json()["detail"]


@needs_pipeline  # scikit-learn's sample photograph
def test_images_of_no_class_are_answered_unknown_and_the_digits_are_not(client, pngs):
    info = client.get("/v1/model").json()["unknown_detector"]
    assert info["name"] == "mahalanobis" and info["threshold"] > 0
    digits = client.post("/v1/predict", files=files(*[(f"d{i}.png", d) for i, d in enumerate(pngs)])).json()
    others = client.post("/v1/predict", files=files(*[(f"x{i}.png", d) for i, d in enumerate(_no_digit_pngs())]))
    others = others.json()["predictions"]
    assert all(p["unknown"] for p in others), [(p["file"], p["unknown_score"]) for p in others]
    assert all(p["label"] in LABELS for p in others)  # still the closest class, for callers that want one
    known = [p for p in digits["predictions"] if not p["unknown"]]
    assert len(known) >= 27, [(p["file"], p["unknown_score"]) for p in digits["predictions"]]
    assert min(p["unknown_score"] for p in others) > max(p["unknown_score"] for p in known)


def test_a_model_exported_without_a_detector_answers_unknown_null(model_dir, tmp_path, pngs):
    import shutil

    copy = tmp_path / "models"
    shutil.copytree(model_dir / "models", copy)
    (copy / "tflite" / "ood_int8.npz").unlink()
    with TestClient(create_app(Settings(model=str(copy / "tflite" / "model_int8.tflite")))) as old:
        prediction = old.post("/v1/predict", files=files(("a.png", pngs[0]))).json()["predictions"][0]
        assert prediction["unknown"] is None and prediction["unknown_score"] is None and prediction["label"]
        assert old.get("/v1/model").json()["unknown_detector"] is None
    (copy / "tflite" / "ood_int8.npz").write_bytes(b"not an npz")
    with pytest.raises(ModelError, match=r"ood_int8\.npz: not a detector"):
        with TestClient(create_app(Settings(model=str(copy / "tflite" / "model_int8.tflite")))):
            pass


def test_health_is_503_until_a_model_is_loaded(model_dir):
    app = create_app(Settings(model=str(model_dir / "models/tflite/model_int8.tflite")))
    cold = TestClient(app)  # no `with`: start-up (the model load) has not run
    assert cold.get("/health").status_code == 503
    assert cold.post("/v1/predict", files=files(("a.png", b"x"))).status_code == 503


def _bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A PNG whose header claims 1.6 billion pixels, in a few hundred bytes (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_bad_files_get_a_per_file_error_in_validates_words_and_do_not_fail_the_others(client, pngs):
    good_jpeg = cv2.imencode(".jpg", np.full((64, 64, 3), 200, np.uint8))[1].tobytes()
    response = client.post(
        "/v1/predict",
        files=files(
            ("ok.png", pngs[0]),
            ("notes.txt", b"just some text, not an image"),
            ("truncated.jpg", good_jpeg[: len(good_jpeg) // 2]),
            ("bomb.png", _bomb_png()),
            ("empty.png", b""),
            ("../../etc/passwd.png", pngs[1]),
            ("..\\..\\windows.png", pngs[2]),
        ),
    )
    assert response.status_code == 200
    got = {p["file"]: p.get("error") or p["label"] for p in response.json()["predictions"]}
    assert list(got) == ["ok.png", "notes.txt", "truncated.jpg", "bomb.png", "empty.png", "passwd.png", "windows.png"]
    assert got["notes.txt"].startswith("readable: not an image")
    assert got["truncated.jpg"].startswith("readable: ")
    assert got["bomb.png"].startswith("max_pixels: 40000x40000")
    assert got["empty.png"] == "readable: zero-byte file"
    assert got["ok.png"] in LABELS and got["passwd.png"] in LABELS and got["windows.png"] in LABELS
    metrics = client.get("/metrics").text
    assert 'imgclf_file_errors_total{rule="readable"} 3.0' in metrics
    assert 'imgclf_file_errors_total{rule="max_pixels"} 1.0' in metrics


def test_request_level_problems_are_4xx_with_a_detail_and_the_server_keeps_serving(model_dir, pngs):
    with client_for(model_dir, max_files=64, max_upload_mb=20, max_file_mb=6) as client:
        big = client.post("/v1/predict", files=files(("big.jpg", os.urandom(50 * 1024 * 1024))))
        assert big.status_code == 413 and "limit 20 MB" in big.json()["detail"]
        many = client.post("/v1/predict", files=files(*[(f"{i}.png", pngs[0]) for i in range(1000)]))
        assert many.status_code == 413 and "more than 64 files" in many.json()["detail"]
        as_json = client.post("/v1/predict", json={"file": "a.png"})
        assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["detail"]
        empty = client.post("/v1/predict", content=b"", headers={"content-type": "multipart/form-data; boundary=x"})
        assert empty.status_code in (400, 422) and empty.json()["detail"]
        no_file = client.post("/v1/predict", data={"name": "x"}, files=[("other", ("a.png", pngs[0], "image/png"))])
        assert no_file.status_code == 422 and "no 'file' field" in no_file.json()["detail"]
        text_field = client.post("/v1/predict", data={"file": "not an upload"}, files=files(("a.png", pngs[0])))
        assert text_field.status_code == 200
        assert [p.get("error", "")[:9] for p in text_field.json()["predictions"]] == ["readable:", ""]
        large_file = client.post("/v1/predict", files=files(("huge.png", b"\x89PNG" + b"0" * (7 * 1024 * 1024))))
        assert large_file.json()["predictions"][0]["error"].startswith("file_size: 7.0 MB > limit 6 MB")
        # still serving
        assert client.get("/health").status_code == 200
        assert client.post("/v1/predict", files=files(("ok.png", pngs[0]))).json()["predictions"][0]["label"] in LABELS
        assert 'imgclf_requests_total{path="/v1/predict",status="413"} 2.0' in client.get("/metrics").text


def test_the_onnx_variant_serves_the_same_labels_as_float32_tflite(model_dir, pngs):
    uploads = files(*[(f"d{i}.png", data) for i, data in enumerate(pngs)])
    with client_for(model_dir, "onnx") as onnx, client_for(model_dir, "float32") as tflite:
        assert onnx.get("/v1/model").json()["variant"] == "onnx"
        by_onnx = onnx.post("/v1/predict", files=uploads).json()["predictions"]
        by_tflite = tflite.post("/v1/predict", files=uploads).json()["predictions"]
    assert [p["label"] for p in by_onnx] == [p["label"] for p in by_tflite]
    assert np.allclose([p["probability"] for p in by_onnx], [p["probability"] for p in by_tflite], atol=1e-4)


def test_the_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'fetch("v1/predict"' in page.text and "http://" not in page.text and "https://" not in page.text


def test_a_model_that_cannot_be_found_stops_the_start_with_one_line(tmp_path):
    app = create_app(Settings(model=str(tmp_path / "missing.tflite")))
    with pytest.raises(ModelError, match=r"imgclf.serve: model file .*missing.tflite not found: check IMGCLF_MODEL"):
        with TestClient(app):
            pass


def test_settings_come_from_params_yaml_then_the_environment(tmp_path, monkeypatch):
    import shutil

    shutil.copy(Path(__file__).resolve().parent.parent / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMGCLF_VARIANT", "onnx")
    monkeypatch.delenv("IMGCLF_MODEL", raising=False)
    settings = Settings.load()
    assert settings.variant == "onnx" and settings.max_files == 64 and settings.model is None
    (tmp_path / "params.yaml").write_text(
        (tmp_path / "params.yaml").read_text().replace("max_files: 64", "max_files: -1")
    )
    from imgclf.io import PipelineError

    with pytest.raises(PipelineError, match=r"serve\.max_files = -1"):
        Settings.load()


def test_a_model_card_that_does_not_fit_the_model_stops_the_start(model_dir, tmp_path):
    import shutil

    folder = tmp_path / "models" / "tflite"
    folder.mkdir(parents=True)
    shutil.copy(model_dir / "models/tflite/model_int8.tflite", folder)
    card = json.loads((model_dir / "models/tflite/model_card.json").read_text())
    for change, message in (
        (lambda c: c.update(labels=["a", "b", "c"]), "has 10 outputs but .* lists 3 labels"),
        (lambda c: c["input"].update(image_size=64), "cannot load or run it with model_card.json's 64px"),
        (lambda c: c.pop("input"), "not a model card export-tflite wrote"),
    ):
        broken = json.loads(json.dumps(card))
        change(broken)
        (folder / "model_card.json").write_text(json.dumps(broken))
        with pytest.raises(ModelError, match=message):
            with TestClient(create_app(Settings(model=str(folder / "model_int8.tflite")))):
                pass


def test_a_model_not_fit_to_ship_is_refused_unless_allowed(model_dir, tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "models" / "tflite"
    folder.mkdir(parents=True)
    shutil.copy(model_dir / "models/tflite/model_int8.tflite", folder)
    card = json.loads((model_dir / "models/tflite/model_card.json").read_text())
    reason = "test accuracy 0.2000 on 150 images is not above chance (0.200) beyond noise (binomial p 0.54)"
    card["verdict"] = {"fit_to_ship": False, "reason": reason}
    (folder / "model_card.json").write_text(json.dumps(card))
    model = str(folder / "model_int8.tflite")
    with pytest.raises(ModelError, match=r"is not fit to ship: test accuracy 0.2000 .* IMGCLF_ALLOW_UNFIT=1"):
        with TestClient(create_app(Settings(model=model))):
            pass
    monkeypatch.setenv("IMGCLF_ALLOW_UNFIT", "1")
    monkeypatch.setenv("IMGCLF_MODEL", model)
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the shipped defaults, then the environment
    with TestClient(create_app(Settings.load())) as allowed:
        info = allowed.get("/v1/model").json()
    assert info["fit_to_ship"] is False and info["not_fit_reason"] == reason


def test_an_unblessed_variant_falls_back_to_a_blessed_one_by_name_and_is_refused_by_path(
    model_dir, tmp_path, monkeypatch
):
    import shutil

    folder = tmp_path / "models" / "tflite"
    folder.mkdir(parents=True)
    for variant in ("int8", "float32"):
        shutil.copy(model_dir / f"models/tflite/model_{variant}.tflite", folder)
    card = json.loads((model_dir / "models/tflite/model_card.json").read_text())
    card["variants"] = {"float32": "model_float32.tflite", "int8": "model_int8.tflite"}
    card["unblessed"] = {"int8": "not blessed: accuracy 0.6700 is 0.0800 below Keras' 0.7500 on 300 images"}
    (folder / "model_card.json").write_text(json.dumps(card))
    monkeypatch.chdir(tmp_path)  # the workspace layout: models/tflite/model_<variant>.tflite
    with TestClient(create_app(Settings(variant="int8", workers=1))) as by_name:
        assert by_name.get("/v1/model").json()["variant"] == "float32"  # and the log says why
    with pytest.raises(
        ModelError,
        match=r"variant int8 is not blessed: accuracy 0.6700 .*; variant float32 is blessed: unset IMGCLF_MODEL and set IMGCLF_VARIANT=float32",
    ):
        with TestClient(create_app(Settings(model=str(folder / "model_int8.tflite")))):
            pass
    card["unblessed"]["float32"] = "not blessed: accuracy 0.7000"
    (folder / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"variant int8 is not blessed: .* no other variant is blessed"):
        with TestClient(create_app(Settings(variant="int8", workers=1))):
            pass


@needs_pipeline
def test_a_served_prediction_equals_the_predict_stages_for_the_same_file(client, model_dir, pngs, tmp_path):
    from imgclf.ship.predict import Item, predict
    from imgclf.ship.runtime import load_classifier

    jpeg = cv2.imencode(".jpg", cv2.resize(np.load(model_dir / "digits_x.npy")[3], (90, 70)))[1].tobytes()
    uploads = {"a.png": pngs[4], "b.jpg": jpeg}
    for name, data in uploads.items():
        (tmp_path / name).write_bytes(data)
    from imgclf.ship.ood import Detector

    classifier = load_classifier(model_dir / "models/tflite/model_int8.tflite")
    detector = Detector.load(model_dir / "models/tflite/ood_int8.npz")
    items = [Item(n, tmp_path / n) for n in uploads]
    table = predict(classifier, items, LABELS, 28, "grayscale", top_k=3, detector=detector)
    served = client.post("/v1/predict", files=files(*uploads.items())).json()["predictions"]
    for row, prediction in zip(table.to_dict("records"), served, strict=True):
        assert prediction["label"] == row["predicted_label"]
        assert prediction["probability"] == pytest.approx(row["probability"], abs=1e-6)
        assert [t["label"] for t in prediction["top_k"]] == [row[f"top{r}_label"] for r in (1, 2, 3)]
        assert prediction["unknown"] == row["unknown"]
        assert prediction["unknown_score"] == pytest.approx(row["unknown_score"], abs=1e-6)


@needs_pipeline
def test_a_registry_alias_serves_the_versions_exported_file_and_reports_its_version(
    model_dir, pngs, tmp_path, monkeypatch
):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("serve-test", artifact_location=(tmp_path / "mlruns").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifacts(str(model_dir / "models/tflite"), "tflite")
        mlflow.log_metric("test_accuracy", 0.91)
    client = MlflowClient(uri)
    client.create_registered_model("digits")
    version = client.create_model_version("digits", f"runs:/{run.info.run_id}/tflite", run.info.run_id)
    client.set_registered_model_alias("digits", "champion", version.version)
    with TestClient(create_app(Settings(model="models:/digits@champion", variant="int8", workers=1))) as served:
        info = served.get("/v1/model").json()
        assert info["version"] == "1" and info["run_id"] == run.info.run_id and info["metrics"]["test_accuracy"] == 0.91
        assert served.post("/v1/predict", files=files(("a.png", pngs[0]))).json()["predictions"][0]["label"] in LABELS
    with pytest.raises(ModelError, match="digits@nobody"):
        with TestClient(create_app(Settings(model="models:/digits@nobody"))):
            pass


def test_exactly_the_file_limit_is_accepted(client, pngs):
    response = client.post("/v1/predict", files=files(*[(f"{i}.png", pngs[i % len(pngs)]) for i in range(64)]))
    assert response.status_code == 200 and len(response.json()["predictions"]) == 64
    assert response.json()["predictions"][63]["file"] == "63.png"


@pytest.fixture
def live_server(model_dir, tmp_path):
    """``python -m imgclf.serve`` on a free loopback port, as `make serve` starts it; stopped afterwards."""
    import subprocess
    import sys
    import time

    import httpx

    from imgclf.team.server import free_port

    port = free_port()
    env = {**os.environ, "IMGCLF_MODEL": str(model_dir / "models/tflite/model_int8.tflite")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env["IMGCLF_LOG"] = str(tmp_path / "logs" / "predictions.db")
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "imgclf.serve", "--port", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become healthy in 120 s"
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@needs_pipeline
def test_the_page_in_a_real_browser_shows_the_top_label_of_an_uploaded_image(live_server, pngs, tmp_path):
    import shutil

    import httpx
    from playwright.sync_api import sync_playwright

    image = tmp_path / "digit.png"
    image.write_bytes(pngs[7])
    expected = httpx.post(f"{live_server}/v1/predict", files=files(("digit.png", pngs[7]))).json()["predictions"][0]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium and (os.geteuid() != 0 or not shutil.which("apt-get")):
        pytest.skip("Debian's chromium is not installed and apt is unavailable to install it")
    assert chromium, "Debian's chromium is not installed: `make test-tools` installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(live_server + "/")
            page.wait_for_selector("#model:not(:has-text('loading'))")
            assert "10 classes, 28px grayscale, variant int8" in page.inner_text("#model")
            page.set_input_files("#files", str(image))
            first_bar = page.wait_for_selector(".result .bar .label", timeout=30_000)
            assert first_bar.inner_text() == expected["label"]
            assert page.inner_text(".result .name") == "digit.png"
            assert len(page.query_selector_all(".result .bar")) == 3

            # a digit and a photograph of no digit: the photograph is flagged unknown; a person confirms
            # the first answer with one click and corrects the second by picking the class
            photo = tmp_path / "photo.png"
            photo.write_bytes(_no_digit_pngs()[4])
            page.set_input_files("#files", [str(image), str(photo)])
            page.wait_for_selector(".result[data-file='photo.png'] .feedback", timeout=30_000)
            assert "unknown: unlike anything" in page.inner_text(".result[data-file='photo.png']")
            assert not page.query_selector(".result[data-file='digit.png'] .unknown")
            page.click(".result[data-file='digit.png'] button.right")
            other = next(label for label in LABELS if label != expected["label"])
            page.select_option(".result[data-file='photo.png'] select.correct-to", other)
            page.wait_for_selector(".result[data-file='photo.png'] .done", timeout=30_000)
            page.wait_for_selector(".result[data-file='digit.png'] .done", timeout=30_000)
            assert page.inner_text(".result[data-file='photo.png'] .done") == f"thanks: corrected to {other}"
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()
    from imgclf.ship.prediction_log import read

    feedback = read(tmp_path / "logs" / "predictions.db",
                    "SELECT p.file, f.label, f.outcome FROM feedback f JOIN predictions p ON p.id = f.prediction_id")  # fmt: skip
    assert sorted(feedback) == [("digit.png", expected["label"], "correct"), ("photo.png", other, "corrected")]


@needs_pipeline
@pytest.mark.slow
def test_the_service_runs_from_requirements_serve_alone(model_dir, tmp_path):
    """What the Dockerfile installs (there is no Docker daemon here): a fresh virtual environment with
    requirements-serve.txt and the test tools only, no TensorFlow, runs this file's service tests."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    venv = tmp_path / "slim"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(root / "requirements-serve.txt"), "pytest==9.2.0", "httpx==0.28.1"], check=True)
    for heavy in ("tensorflow", "pandas", "mlflow", "sklearn"):  # the slim set really has none of them
        assert subprocess.run([str(python), "-c", f"import {heavy}"], capture_output=True).returncode != 0, heavy
    env = {**os.environ, "PYTHONPATH": str(root), "IMGCLF_TEST_MODEL_DIR": str(model_dir)}
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", "-m", "not needs_pipeline",
         str(root / "tests" / "test_serve.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout and "deselected" in result.stdout
