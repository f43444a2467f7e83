"""The train and evaluate stages for real, on a small Fashion-MNIST subset in a copy of the repo."""

import json
import sys

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from imgclf.data.shards import read_split
from imgclf.io import read_json
from imgclf.paths import layout
from tests.conftest import kill_training_after_two_epochs, run, set_params

pytestmark = pytest.mark.slow


@pytest.fixture
def prepared(repo_copy, fashion_mnist_dir):
    """Data stages done on 100 images per class and split; training kept short."""
    set_params(
        repo_copy,
        ingest={"limit": 100},
        validate={"min_per_class": 20},
        train={"epochs": 6, "batch_size": 64},
        predict={"allow_unfit": True},  # a short training: these tests are about the stages, not the model
    )
    run(["dvc", "repro", "augment"], repo_copy)
    return repo_copy


def test_training_killed_mid_way_resumes_from_its_last_epoch(prepared):
    paths = layout(prepared)
    epochs_done, _ = kill_training_after_two_epochs([sys.executable, "stages/train.py"], prepared)
    assert not paths.model.exists()

    resumed = run([sys.executable, "stages/train.py"], prepared)
    assert "resumed from backup: continuing at epoch" in resumed.stderr
    history = pd.read_csv(paths.history)
    assert history["epoch"].tolist() == list(range(6))  # every epoch once: the count continued
    assert paths.model.exists() and paths.run_info.exists()
    assert not any(paths.train_backup.iterdir())  # finished: no stale backup left

    client = MlflowClient(f"sqlite:///{prepared / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("imgclf").experiment_id])
    assert len(runs) == 1  # the resumed training logged into the run it started
    # CSVLogger writes an epoch's row just before BackupAndRestore saves that epoch, so a kill
    # in between loses at most the last epoch seen in the log: resume is never further back.
    assert int(runs[0].data.tags["resumed_from_epoch"]) >= epochs_done - 1
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")]
    assert sorted(set(steps)) == list(range(6))


def test_repro_tracks_in_mlflow_and_diffs_after_a_param_change(prepared):
    """The whole graph, its MLflow run, then `dvc metrics diff` and `dvc plots diff` after changing train.epochs."""
    run(["git", "add", "-A"], prepared)
    run(["git", "commit", "-qm", "pipeline"], prepared)
    set_params(prepared, train={"epochs": 2})
    run(["dvc", "repro"], prepared, check=True)
    paths = layout(prepared)
    info = read_json(paths.run_info)
    client = MlflowClient(f"sqlite:///{prepared / 'mlflow.db'}")
    mlflow_run = client.get_run(info["run_id"])
    params, tags, metrics = mlflow_run.data.params, mlflow_run.data.tags, mlflow_run.data.metrics
    assert params["train.epochs"] == "2" and params["ingest.limit"] == "100" and params["preprocess.image_size"] == "28"
    assert tags["git_commit"] == run(["git", "rev-parse", "HEAD"], prepared).stdout.strip()
    assert len(tags["data_hash"]) == 64 and tags["model"] == params["train.model"]
    assert [m.step for m in client.get_metric_history(info["run_id"], "val_loss")] == [0, 1]
    assert metrics["test_accuracy"] == read_json(paths.metrics)["accuracy"]
    artifacts = {a.path for a in client.list_artifacts(info["run_id"], "eval")}
    assert {"eval/confusion_matrix.png", "eval/grad_cam.png", "eval/roc.png", "eval/metrics.json"} <= artifacts
    version = client.get_model_version(info["registered_model"]["name"], str(info["registered_model"]["version"]))
    assert version.run_id == info["run_id"]
    assert {"eval/roc.csv", "eval/calibration.csv"} <= artifacts

    # the DVC metrics are a headline of numbers (no strings, no booleans); the detail is beside them
    headline = {}
    for stage in yaml.safe_load((prepared / "dvc.yaml").read_text())["stages"].values():
        for entry in stage.get("metrics", []):
            name = next(iter(entry)) if isinstance(entry, dict) else entry
            headline |= {f"{name}:{k}": v for k, v in _leaves(read_json(prepared / name)).items()}
    assert 10 <= len(headline) <= 20, headline
    assert all(type(v) in (int, float) for v in headline.values()), headline
    assert headline["reports/metrics.json:accuracy"] == read_json(paths.eval_detail)["test"]["accuracy"]
    assert "per_class" in read_json(paths.eval_detail)["test"]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{prepared / 'mlflow.db'}")
    logged = mlflow.models.get_model_info(info["model_uri"])
    assert logged.signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] == "uint8"
    assert logged.saved_input_example_info is not None

    # commit, change train.epochs, repro: only train and evaluate rerun, and the diffs show both
    run(["git", "add", "-A"], prepared)
    run(["git", "commit", "-qm", "two epochs"], prepared)
    set_params(prepared, train={"epochs": 3})
    rerun = run(["dvc", "repro"], prepared)
    assert "Running stage 'train'" in rerun.stdout and "Running stage 'evaluate'" in rerun.stdout
    assert "Running stage 'augment'" not in rerun.stdout

    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], prepared).stdout)["reports/metrics.json"]
    assert diff["log_loss"]["old"] != diff["log_loss"]["new"]
    assert "log_loss" in run(["dvc", "metrics", "diff"], prepared).stdout

    for plot, field in (("confusion", "actual"), ("loss", "val_loss")):
        vega = json.loads(run(["dvc", "plots", "diff", "HEAD", "--show-vega", "--targets", plot], prepared).stdout)
        values = _vega_values(vega)
        assert {v["rev"] for v in values} == {"HEAD", "workspace"}, plot
        assert any(field in v or v.get("field") == field for v in values), plot
    loss_points = _vega_values(
        json.loads(run(["dvc", "plots", "diff", "HEAD", "--show-vega", "--targets", "loss"], prepared).stdout)
    )
    assert {(v["rev"], int(v["epoch"])) for v in loss_points} >= {("HEAD", 1), ("workspace", 2)}
    html = run(["dvc", "plots", "diff", "HEAD", "-o", "plots"], prepared)
    assert (prepared / "plots" / "index.html").exists(), html.stdout

    # export-tflite: every variant verified; a forced accuracy drop fails with one clear line
    report = read_json(paths.export_report)
    assert set(report["variants"]) == {"float32", "float16", "dynamic", "int8", "onnx"}
    assert report["variants"]["float32"]["agreement"] >= 0.99
    assert (paths.labels).read_text().splitlines()[0] == "T-shirt/top"
    assert all(v["blessed"] for v in report["variants"].values()), report
    assert read_json(paths.shipped_metrics)["shipped_blessed"] == 1
    # a gate that fails records its verdict and finishes (the run keeps its metrics); `fail` fails the stage
    set_params(prepared, export={"max_accuracy_drop": -1.0, "significance": 1.01})  # any drop, any p
    recorded = run(["dvc", "repro", "export-tflite"], prepared)
    assert "NOT BLESSED: 5 variant(s) lost too much accuracy" in recorded.stderr + recorded.stdout
    report = read_json(paths.export_report)
    assert not any(v["blessed"] for v in report["variants"].values())
    assert report["variants"]["int8"]["verdict"].startswith("not blessed: accuracy")
    assert read_json(paths.shipped_metrics)["shipped_blessed"] == 0
    assert set(read_json(paths.tflite_meta)["unblessed"]) == set(report["variants"])
    set_params(prepared, export={"max_accuracy_drop": -1.0, "significance": 1.01, "on_gate_failure": "fail"})
    failed = run(["dvc", "repro", "export-tflite"], prepared, check=False)
    assert failed.returncode != 0
    assert "export-tflite: error: 5 variant(s) lost too much accuracy: float32 accuracy" in failed.stderr
    assert "Traceback" not in failed.stderr

    # predict on a folder with a CSV of names (the seed layout's test folder), one image corrupt
    import cv2

    folder = prepared / "unlabeled"
    (folder / "images").mkdir(parents=True)
    test_x, _ = read_split(paths, "test")
    for i in range(4):
        cv2.imwrite(str(folder / "images" / f"photo {i}.jpg"), cv2.resize(test_x[i], (64, 64)))
    (folder / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "test.csv").write_text("image_name\nphoto 0.jpg\ncorrupt.png\nphoto 1.jpg\nphoto 2.jpg\nphoto 3.jpg\n")
    run([sys.executable, "stages/predict.py", "unlabeled", "--output", "out/predictions.csv"], prepared)
    table = pd.read_csv(prepared / "out" / "predictions.csv", keep_default_na=False)
    assert len(table) == 5 and table.loc[1, "error"].startswith("readable: ")
    assert set(table.loc[table["error"] == "", "predicted_label"]) <= set(paths.labels.read_text().splitlines())

    # evaluate's verdict travels in the model card; a model not fit to ship is refused in one line
    card = read_json(paths.tflite_meta)
    assert card["verdict"] == {k: read_json(paths.eval_verdict)[k] for k in ("fit_to_ship", "reason")}
    card["verdict"] = {"fit_to_ship": False, "reason": "test accuracy 0.1000 is not above chance"}
    paths.tflite_meta.write_text(json.dumps(card))
    set_params(prepared, predict={"allow_unfit": False})
    refused = run([sys.executable, "stages/predict.py", "unlabeled", "--output", "out/refused.csv"], prepared, False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "predict: error: the model is not fit to ship: test accuracy 0.1000 is not above chance" in refused.stderr


def _vega_values(spec) -> list[dict]:
    """The data rows of a Vega-Lite spec printed by `dvc plots --show-vega`."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("values"), list) and node["values"] and isinstance(node["values"][0], dict):
                found.extend(node["values"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    return found


def _leaves(tree: dict, prefix: str = "") -> dict:
    """{"test": {"accuracy": 0.9}} -> {"test.accuracy": 0.9}, the way DVC names metrics."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _leaves(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
