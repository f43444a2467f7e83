import json

import keras
import numpy as np
import pandas as pd
import pytest

from imgclf.io import PipelineError
from imgclf.params import load_section
from imgclf.paths import REPO_ROOT
from imgclf.train import training
from imgclf.train.models import build_model
from imgclf.train.plan import plan_training

SHIPPED = load_section("train", REPO_ROOT / "params.yaml")
BASE = {**SHIPPED, "learning_rate": 0.01, "batch_size": 32, "epochs": 4, "seed": 1, "model": "simple_cnn"}


def test_cosine_schedule_warms_up_then_decays():
    schedule = training.learning_rate({**BASE, "schedule": "cosine", "warmup_fraction": 0.25}, total_steps=40)
    values = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
    assert values[0] == pytest.approx(0.001)
    assert values[0] < values[1] < values[2] == pytest.approx(0.01)
    assert values[2] > values[3] > values[4] >= 0
    assert training.learning_rate({**BASE, "schedule": "constant"}, 40) == 0.01
    with pytest.raises(PipelineError, match="schedule"):
        training.learning_rate({**BASE, "schedule": "exp"}, 40)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_optimizers(name):
    optimizer = training.optimizer({**BASE, "optimizer": name, "weight_decay": 1e-4, "momentum": 0.8}, 0.1)
    expected = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "sgd": keras.optimizers.SGD}
    assert type(optimizer) is expected.get(name, keras.optimizers.RMSprop)
    with pytest.raises(PipelineError, match="optimizer"):
        training.optimizer({**BASE, "optimizer": "lion"}, 0.1)


def test_train_dataset_is_seeded_and_one_hot():
    x = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1)
    y = np.arange(50) % 5

    def first_batch(seed):
        images, labels = next(iter(training.train_dataset(x, y, 5, batch_size=8, seed=seed)))
        return images.numpy().ravel(), labels.numpy()

    a, labels = first_batch(3)
    b, _ = first_batch(3)
    c, _ = first_batch(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert labels.shape == (8, 5)
    np.testing.assert_array_equal(labels.argmax(1), a % 5)  # labels travel with their images


def test_online_augmentation_flips_and_shifts_reproducibly_and_keeps_uint8():
    assert training.online_augmentation({"horizontal_flip": False, "shift": 0}, 1) is None
    x = np.zeros((64, 12, 12, 1), np.uint8)
    x[:, :, :3] = 200  # a bright band on the left edge of every image
    y = np.arange(64) % 4

    def epoch(seed):
        keras.utils.set_random_seed(seed)
        augment = training.online_augmentation({"horizontal_flip": True, "shift": 0.1}, seed)
        batches = training.train_dataset(x, y, 4, batch_size=16, seed=seed, augment=augment)
        return np.concatenate([images.numpy() for images, _ in batches])

    first, again = epoch(5), epoch(5)
    assert first.dtype == np.uint8 and first.shape == x.shape
    np.testing.assert_array_equal(first, again)  # seeded: the same draws on every run
    band_right = first[:, :, -4:].mean(axis=(1, 2, 3)) > first[:, :, :4].mean(axis=(1, 2, 3))
    assert 0.2 < band_right.mean() < 0.8  # about half the images flipped
    assert (first != x).any(axis=(1, 2, 3)).mean() > 0.5  # and most moved


def test_is_chief(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert training.is_chief()
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert training.is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert not training.is_chief()
    with_chief = {**cluster, "chief": ["localhost:0"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))
    assert not training.is_chief()


def test_read_history_keeps_the_last_row_of_a_repeated_epoch(tmp_path):
    path = tmp_path / "history.csv"
    pd.DataFrame({"epoch": [0, 1, 1, 2], "loss": [3.0, 2.0, 1.9, 1.5]}).to_csv(path, index=False)
    history = training.read_history(path)
    assert history["epoch"].tolist() == [0, 1, 2]
    assert history["loss"].tolist() == [3.0, 1.9, 1.5]


def test_pretrained_transfer_trains_in_two_phases_with_continuous_epochs(tmp_path, digits):
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    weights = tmp_path / "base.weights.h5"
    base.save_weights(weights)
    images, target = digits
    x = np.repeat(np.repeat(images[:, :, :, None], 4, axis=1), 4, axis=2)[:, :28, :28]  # 32x32 -> 28x28 crop
    data = training.TrainData(x[:200], target[:200], x[200:260], target[200:260], [str(d) for d in range(10)])
    params = {
        **BASE,
        "model": "mobilenet_v2",
        "epochs": 3,
        "transfer": {**SHIPPED["transfer"], "weights": str(weights), "frozen_epochs": 1, "fine_tune_layers": 5},
    }
    model = build_model("mobilenet_v2", x.shape[1:], 10, params)
    training.compile_model(model, params, 0.01)
    history_path = tmp_path / "history.csv"
    plan = plan_training(params, len(data.x_train), data.y_val, 10)
    training.fit(model, data, params, plan, tmp_path / "run", history_path)
    assert training.read_history(history_path)["epoch"].tolist() == [0, 1, 2]
    assert (tmp_path / "run" / "frozen.done.weights.h5").exists()


def test_early_stopping_state_survives_a_restart(tmp_path):
    model = build_model(
        "simple_cnn", (8, 8, 1), 3, {**BASE, "simple_cnn": {**BASE["simple_cnn"], "filters": [4], "dense": 8}}
    )
    weights = [w + 1.0 for w in model.get_weights()]
    np.savez(tmp_path / "best.npz", **{f"w{i}": w for i, w in enumerate(weights)})
    pd.DataFrame({"epoch": [0, 1, 2, 3], "val_loss": [1.0, 0.8, 0.9, 0.85]}).to_csv(tmp_path / "h.csv", index=False)
    callback = training.ResumableEarlyStopping(tmp_path / "best.npz", tmp_path / "h.csv", patience=3)
    callback.set_model(model)
    callback.on_train_begin()
    assert (callback.best, callback.best_epoch, callback.wait) == (0.8, 1, 2)
    callback.on_epoch_end(4, {"val_loss": 0.95})  # third epoch without improvement: patience 3 reached
    assert model.stop_training
    callback.on_train_end()  # restores the best weights saved before the "kill"
    np.testing.assert_array_equal(model.get_weights()[0], weights[0])


def test_a_base_trained_on_one_dataset_fine_tunes_on_photos_offline(tmp_path, digits):
    """The offline transfer path: train on digits, save the base with the CLI, fine-tune it on photo crops."""
    import cv2

    from imgclf.train.models import main as models_cli
    from imgclf.train.models import transfer_base
    from tests.photos import photo_crop, skimage_classes

    images, target = digits
    x = np.stack([cv2.resize(image, (32, 32), interpolation=cv2.INTER_NEAREST) for image in images])[..., None]
    params = {**BASE, "model": "mobilenet_v2", "epochs": 1, "transfer": {**SHIPPED["transfer"], "weights": None}}
    pretrain = build_model("mobilenet_v2", x.shape[1:], 10, params)
    training.compile_model(pretrain, params, 0.01)
    pretrain.fit(x[:256], keras.utils.to_categorical(target[:256], 10), batch_size=64, epochs=1, verbose=0)
    pretrain.save(tmp_path / "digits.keras")
    weights = tmp_path / "digits_base.weights.h5"
    assert models_cli(["base-weights", str(tmp_path / "digits.keras"), str(weights)]) == 0
    assert models_cli(["base-weights", str(tmp_path / "digits.keras"), str(tmp_path / "w.h5")]) == 1

    rng = np.random.default_rng(0)
    names = skimage_classes(3)
    labels = np.arange(60) % 3
    photos = np.stack([cv2.resize(photo_crop(names[i], rng), (32, 32), interpolation=cv2.INTER_AREA) for i in labels])
    transfer = {**SHIPPED["transfer"], "weights": str(weights), "frozen_epochs": 1, "fine_tune_layers": 10}
    params = {**BASE, "model": "mobilenet_v2", "epochs": 2, "transfer": transfer}
    model = build_model("mobilenet_v2", photos.shape[1:], 3, params)
    for loaded, trained in zip(transfer_base(model).get_weights(), transfer_base(pretrain).get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, trained)  # the digits base, not random or ImageNet weights
    training.compile_model(model, params, 0.01)
    data = training.TrainData(photos[:45], labels[:45], photos[45:], labels[45:], names)
    plan = plan_training(params, len(data.x_train), data.y_val, 3)
    training.fit(model, data, params, plan, tmp_path / "run", tmp_path / "history.csv")
    assert training.read_history(tmp_path / "history.csv")["epoch"].tolist() == [0, 1]


def _constant_images_data(n=160, classes=4):
    """Images that carry no information: no network can leave chance on them."""
    x = np.full((n, 8, 8, 1), 128, np.uint8)
    y = np.arange(n) % classes
    return training.TrainData(x, y, x[:40], y[:40], [f"c{i}" for i in range(classes)])


STALL_NET = {**BASE["simple_cnn"], "filters": [4], "dense": 8}


def test_a_training_that_never_leaves_chance_restarts_at_lower_rates_then_fails(tmp_path):
    data = _constant_images_data()
    params = {**BASE, "epochs": 4, "batch_size": 16, "simple_cnn": STALL_NET}
    params["stall"] = {**params["stall"], "check_fraction": 0.25, "min_steps": 10, "restarts": 1, "lr_divisor": 10}
    model = build_model("simple_cnn", (8, 8, 1), 4, params)
    training.compile_model(model, params, 0.01)
    plan = plan_training(params, len(data.x_train), data.y_val, 4)
    history = tmp_path / "history.csv"
    with pytest.raises(PipelineError, match=r"TRAINING STALLED at every learning rate tried \(0.01, 0.001\)"):
        training.fit_guarded(model, data, params, plan, tmp_path / "run", history, saved=tmp_path / "lr.json")
    assert not history.exists()  # progress reset: a rerun starts from the initial weights, not a stalled epoch
    saved = json.loads((tmp_path / "lr.json").read_text())
    assert saved["learning_rate"] == pytest.approx(0.001) and len(saved["restarts"]) == 1
    assert "training accuracy" in saved["restarts"][0]["stalled"]


def test_a_diverging_training_recovers_at_a_lower_rate_from_its_initial_weights(tmp_path, digits):
    images, target = digits
    x = images[:400, :, :, None]
    data = training.TrainData(x, target[:400], x[:80], target[:80], [str(d) for d in range(10)])
    params = {**BASE, "epochs": 5, "batch_size": 32, "schedule": "constant", "simple_cnn": STALL_NET}
    params["stall"] = {**params["stall"], "check_fraction": 0.4, "min_steps": 10, "restarts": 1, "lr_divisor": 1e6}
    keras.utils.set_random_seed(1)
    model = build_model("simple_cnn", x.shape[1:], 10, params)
    initial = [w.copy() for w in model.get_weights()]
    training.compile_model(model, params, 1e4)  # AdamW far past the edge: NaN or stuck at chance
    plan = plan_training({**params, "learning_rate": 1e4}, len(data.x_train), data.y_val, 10)
    restarted = []

    class Watch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            restarted.append([w.copy() for w in self.model.get_weights()])

    _, plan = training.fit_guarded(model, data, params, plan, tmp_path / "run", tmp_path / "h.csv", [Watch()])
    assert len(plan.restarts) == 1 and plan.restarts[0]["learning_rate"] == 1e4
    assert plan.learning_rate == pytest.approx(0.01)
    np.testing.assert_array_equal(restarted[1][0], initial[0])  # the restart began from the initial weights
    history = training.read_history(tmp_path / "h.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3, 4]  # the stalled attempt's epochs are gone from the log
    assert history["accuracy"].iloc[-1] > 0.3


def test_underfitting_is_reported_with_what_to_try():
    plan = plan_training({**BASE, "learning_rate": 0.004}, 100, np.arange(20) % 2, 2)
    assert training.underfit_warning(pd.DataFrame({"accuracy": [0.5, 0.97]}), BASE, plan) is None
    warning = training.underfit_warning(pd.DataFrame({"accuracy": [0.5, 0.81]}), BASE, plan)
    assert warning.startswith("UNDERFITTING: the training accuracy is 0.810 after 2 epochs")
    assert "train.auto.min_epochs" in warning and "0.004" in warning and "resnet_small" in warning


def test_the_stall_check_waits_for_enough_steps_and_skips_a_smoke_run():
    stall = BASE["stall"]  # 10 % of the steps and at least 100
    fashion = plan_training({**BASE, "batch_size": "auto", "epochs": "auto"}, 106_000, np.arange(7000) % 10, 10)
    assert training.check_epoch(stall, fashion) == 1  # 829 steps an epoch
    photos = plan_training({**BASE, "batch_size": "auto", "epochs": "auto"}, 474, np.arange(30) % 6, 6)
    assert (photos.steps_per_epoch, photos.epochs) == (15, 67)
    assert training.check_epoch(stall, photos) == 7  # 101 steps >= 10 % of 1005 and >= 100
    smoke = plan_training({**BASE, "batch_size": 64, "epochs": 1}, 400, np.arange(30) % 10, 10)
    assert training.check_epoch(stall, smoke) == 0  # 7 steps in all: evaluate's verdict judges it
