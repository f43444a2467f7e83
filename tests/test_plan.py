"""The training plan's automatic choices at both ends of the data sizes we promise (the choices, not timings)."""

import numpy as np
import pytest

from imgclf.io import PipelineError
from imgclf.params import load_section
from imgclf.paths import REPO_ROOT
from imgclf.train.plan import plan_training

SHIPPED = load_section("train", REPO_ROOT / "params.yaml")


def _val(per_class: int, classes: int) -> np.ndarray:
    return np.repeat(np.arange(classes), per_class)


def test_shipped_params_are_all_auto():
    assert SHIPPED["batch_size"] == SHIPPED["epochs"] == SHIPPED["early_stopping_patience"] == "auto"


def test_about_a_hundred_photos_get_small_batches_many_epochs_and_no_early_stopping_on_a_tiny_val_split():
    plan = plan_training(SHIPPED, n_train=100, val_labels=_val(2, 4), num_classes=4)
    assert plan.batch_size == 16  # 100 / 16 = 7 steps: the floor, not batch 256 and one step an epoch
    assert plan.steps_per_epoch == 7
    assert plan.epochs == 143  # ceil(1000 / 7): enough optimizer steps to train and settle BatchNorm
    assert plan.total_steps == 1001 and plan.warmup_steps == 50
    assert plan.early_stopping_patience == 0
    assert any("validation split has 8 images (2 in its rarest class)" in w for w in plan.warnings)
    assert plan.reasons["early_stopping_patience"].startswith("auto: off")


def test_a_small_photo_set_with_augmented_copies():
    plan = plan_training(SHIPPED, n_train=440, val_labels=_val(4, 6), num_classes=6)
    assert (plan.batch_size, plan.steps_per_epoch, plan.epochs) == (32, 14, 72)
    assert plan.total_steps >= SHIPPED["auto"]["min_total_steps"]


def test_a_hundred_thousand_images_keep_the_fashion_mnist_schedule():
    plan = plan_training(SHIPPED, n_train=106_000, val_labels=_val(600, 10), num_classes=10)
    assert (plan.batch_size, plan.steps_per_epoch, plan.epochs) == (128, 829, 8)
    assert plan.warmup_steps == 331  # 5 % of all steps: 0.4 of an epoch
    assert plan.early_stopping_patience == 5
    assert plan.warnings == []


def test_the_epoch_cap_holds_for_tiny_sets():
    plan = plan_training(SHIPPED, n_train=20, val_labels=_val(10, 2), num_classes=2)
    assert plan.batch_size == 16 and plan.epochs == SHIPPED["auto"]["max_epochs"]
    assert "capped" in plan.reasons["epochs"]
    assert any("300 optimizer steps in all" in w and "raise train.auto.max_epochs" in w for w in plan.warnings)


def test_explicit_values_win_and_still_warn():
    params = {**SHIPPED, "batch_size": 256, "epochs": 10, "early_stopping_patience": 3}
    plan = plan_training(params, n_train=220, val_labels=_val(3, 6), num_classes=6)
    assert (plan.batch_size, plan.epochs, plan.early_stopping_patience) == (256, 10, 3)
    assert plan.steps_per_epoch == 1 and plan.total_steps == 10
    assert all(plan.reasons[key] == "set in params.yaml" for key in ("batch_size", "epochs", "early_stopping_patience"))
    assert any("fewer than 1000" in w for w in plan.warnings)
    assert any("will choose an epoch from noise" in w for w in plan.warnings)


def test_mlflow_params_carry_the_choices():
    plan = plan_training(SHIPPED, n_train=440, val_labels=_val(10, 6), num_classes=6)
    logged = plan.mlflow_params()
    assert logged["plan.batch_size"] == "32" and logged["plan.epochs"] == "72"
    assert logged["plan.early_stopping_patience"] == "18"  # 0.25 of 72 epochs


@pytest.mark.parametrize("key,value", [("batch_size", "big"), ("epochs", -1), ("epochs", 0), ("batch_size", 2.5)])
def test_bad_values_are_one_line_errors(key, value):
    with pytest.raises(PipelineError, match=f"train.{key}"):
        plan_training({**SHIPPED, key: value}, n_train=100, val_labels=_val(10, 2), num_classes=2)


def test_online_augmentation_is_on_for_small_sets_only_unless_set():
    photos = plan_training(SHIPPED, n_train=474, val_labels=_val(5, 6), num_classes=6)
    assert photos.epochs == 67 and photos.online_augment and photos.reasons["online_augment"].startswith("auto: on")
    fashion = plan_training(SHIPPED, n_train=106_000, val_labels=_val(700, 10), num_classes=10)
    assert fashion.epochs == 8 and not fashion.online_augment  # the network and recipe it was tuned with
    always = {**SHIPPED, "online_augment": {**SHIPPED["online_augment"], "when": "always"}}
    assert plan_training(always, n_train=106_000, val_labels=_val(700, 10), num_classes=10).online_augment
    never = {**SHIPPED, "online_augment": {**SHIPPED["online_augment"], "when": "never"}}
    assert not plan_training(never, n_train=474, val_labels=_val(5, 6), num_classes=6).online_augment
