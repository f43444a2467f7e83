"""The GPU code paths, run without a GPU: mixed precision through to TFLite, and MirroredStrategy.

Issue #16: a model trained under ``mixed_float16`` (what ``train.mixed_precision: auto`` picks on
any GPU) made export-tflite fail, because the converter received float16 ops. Here mixed precision
is forced on the CPU, and MirroredStrategy runs over the CPU split into two logical devices
(tests/mirrored_train.py), so that both paths are tested on every machine.
"""

import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient

from imgclf.io import PipelineError, read_json
from imgclf.paths import layout
from imgclf.ship import export
from imgclf.train import training
from imgclf.train.models import build_model
from tests.conftest import data_stages_done, kill_training_after_two_epochs, run, set_params, shipped

MIRRORED_TRAIN = Path(__file__).with_name("mirrored_train.py")


@pytest.fixture
def global_policy():
    """Restores Keras' global dtype policy after a test that changes it."""
    yield
    keras.mixed_precision.set_global_policy("float32")


def _mixed_model(nested: bool, policy: str = "mixed_float16") -> keras.Model:
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(policy)
    model = build_model("simple_cnn", (28, 28, 1), 10, shipped("train", simple_cnn={"filters": [8, 16], "dense": 32}))
    if nested:  # the network as one layer of an outer model, as keras.applications bases are
        inputs = keras.Input((28, 28, 1), dtype="uint8", name="outer_image")
        model = keras.Model(inputs, model(inputs), name="outer")
    keras.mixed_precision.set_global_policy("float32")
    return model


def _all_layers(model) -> list:
    """Every layer, nested ones included, by Keras' own walk (export has its own)."""
    return list(model._flatten_layers(include_self=False, recursive=True))


@pytest.mark.parametrize(
    ("policy", "nested"), [("mixed_float16", False), ("mixed_float16", True), ("mixed_bfloat16", False)]
)
def test_float32_copy_of_a_mixed_precision_model(global_policy, policy, nested):
    model = _mixed_model(nested, policy)
    assert export.keras_precision(model) == policy
    copy = export.float32_copy(model)
    assert {layer.dtype_policy.name for layer in _all_layers(copy)} == {"float32"}
    assert export.keras_precision(copy) == "float32"
    assert len(copy.weights) == len(model.weights)
    for ours, theirs in zip(copy.get_weights(), model.get_weights(), strict=True):
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
    images = np.random.default_rng(1).integers(0, 256, (32, 28, 28, 1), dtype=np.uint8)
    tolerance = 5e-3 if policy == "mixed_float16" else 3e-2  # bfloat16 keeps 8 bits of mantissa
    np.testing.assert_allclose(copy.predict(images, verbose=0), model.predict(images, verbose=0), atol=tolerance)
    assert export.float32_copy(copy) is copy  # already float32: returned as it is


def test_float32_copy_converts_to_tflite(global_policy, tmp_path):
    """The mixed model's own SavedModel has float16 ops TFLite cannot take; its float32 copy converts."""
    model = _mixed_model(nested=True)
    copy = export.float32_copy(model)
    saved_model = tmp_path / "saved_model"
    copy.export(str(saved_model), format="tf_saved_model", verbose=False)
    path = tmp_path / "model_float32.tflite"
    path.write_bytes(export.convert(saved_model, "float32"))
    images = np.random.default_rng(2).integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
    got = export.TFLiteClassifier(path).predict(images)
    np.testing.assert_allclose(got, copy.predict(images, verbose=0), atol=1e-5)
    np.testing.assert_allclose(got, model.predict(images, verbose=0), atol=5e-3)


def test_set_precision_bf16_and_the_setup_line(global_policy):
    assert training.set_precision("bf16") == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert training.set_precision("off") == "float32"
    with pytest.raises(PipelineError, match=r"auto, on, off or bf16"):
        training.set_precision("fp8")
    line = training.describe_setup(tf.distribute.get_strategy(), "float32")
    assert line.startswith("DefaultDistributionStrategy on 1 device (") and line.endswith("), precision float32")


# The stages, on 50 images per class and split and a small network, in copies of the repository.
TRAIN = {
    "batch_size": 64,
    "early_stopping_patience": 0,
    "simple_cnn": {"filters": [8, 16], "final_size": 7, "dense": 32, "dropout": [0.25, 0.4], "l2": 0.0},
}


@pytest.fixture(scope="module")
def prepared_template(tmp_path_factory, fashion_mnist_dir) -> Path:
    """A git + DVC repository with the data stages done, copied by each test (they run them once)."""
    return data_stages_done(
        tmp_path_factory.mktemp("gpu_path"),
        ingest={"limit": 50},
        validate={"min_per_class": 20},
        export={"variants": list(export.VARIANTS), "latency_runs": 5, "max_accuracy_drop": 1.0},
    )


@pytest.fixture
def prepared(prepared_template, tmp_path) -> Path:
    return Path(shutil.copytree(prepared_template, tmp_path / "repo", symlinks=True))


@pytest.mark.slow
def test_mixed_float16_training_exports_every_variant(prepared):
    set_params(prepared, train={**TRAIN, "epochs": 2, "mixed_precision": "on"})
    run(["dvc", "repro"], prepared)
    paths = layout(prepared)
    report = read_json(paths.export_report)
    assert report["keras_precision"] == "mixed_float16"
    assert set(report["variants"]) == set(export.VARIANTS)
    assert all(paths.exported_model(name).exists() for name in report["variants"])
    assert report["variants"]["float32"]["agreement"] >= 0.95  # to the mixed-precision Keras model
    model = keras.models.load_model(paths.model, compile=False)
    assert export.keras_precision(model) == "mixed_float16"


@pytest.mark.slow
def test_mirrored_strategy_on_two_cpu_devices_resumes_after_a_kill_and_exports(prepared):
    """Also train.mixed_precision: bf16 (mixed_bfloat16), which this test covers on the way."""
    set_params(prepared, train={**TRAIN, "epochs": 6, "mixed_precision": "bf16"})
    paths = layout(prepared)
    _, first_log = kill_training_after_two_epochs([sys.executable, str(MIRRORED_TRAIN)], prepared)
    assert not paths.model.exists()
    setup = "MirroredStrategy on 2 devices (/job:localhost/replica:0/task:0/device:CPU:0, "
    assert setup in first_log

    resumed = run([sys.executable, str(MIRRORED_TRAIN)], prepared)
    assert setup in resumed.stderr
    assert "resumed from backup: continuing at epoch" in resumed.stderr
    history = pd.read_csv(paths.history)
    assert history["epoch"].tolist() == list(range(6))
    client = MlflowClient(f"sqlite:///{prepared / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("imgclf").experiment_id])
    assert len(runs) == 1  # the resumed training logged into the run it started
    assert runs[0].data.tags["training_setup"].startswith(setup)
    assert runs[0].data.tags["training_setup"].endswith("device:CPU:1), precision mixed_bfloat16")
    assert int(runs[0].data.tags["resumed_from_epoch"]) >= 1

    run([sys.executable, "stages/export_tflite.py"], prepared)
    report = read_json(paths.export_report)
    assert report["keras_precision"] == "mixed_bfloat16" and set(report["variants"]) == set(export.VARIANTS)
    assert report["variants"]["float32"]["agreement"] >= 0.9  # to the bfloat16 Keras model
