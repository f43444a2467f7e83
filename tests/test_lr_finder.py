"""train.learning_rate: auto: the range test's rule on known curves, and on a real model and data."""

import math

import keras
import numpy as np
import pytest

from imgclf.io import PipelineError
from imgclf.train import lr_finder, training
from imgclf.train.models import build_model
from imgclf.train.plan import plan_training
from tests.conftest import shipped

AUTO = shipped("train")["auto"]


def test_the_rate_at_the_lowest_smoothed_loss_before_divergence_divided():
    rates = lr_finder.sweep(1e-5, 1.0, 100)
    assert rates[0] == pytest.approx(1e-5) and rates[-1] == pytest.approx(1.0)
    # a loss that falls until 1e-2, then climbs and explodes: the textbook range-test curve
    x = np.log10(rates)
    losses = list(2.3 - 1.5 * np.exp(-((x + 2) ** 2) / 0.8) + np.where(x > -1, 10 ** (3 * (x + 1)), 0))
    chosen, reason, used, at = lr_finder.suggest(rates, losses, divisor=10, diverge_factor=4)
    lowest = rates[int(np.argmin(lr_finder.smooth(losses)[:used]))]
    assert rates[at] == lowest
    assert chosen == pytest.approx(lowest / 10)
    assert 1e-3 < lowest < 3e-2  # the smoothing lags a little behind the true minimum at 1e-2
    assert used < len(rates) and "diverged" in reason
    # NaN ends the usable part of the sweep like a divergence does
    with_nan = losses[:60] + [math.nan] * 40
    _, _, used, at = lr_finder.suggest(rates, with_nan, 10, 4)
    assert used == 60 and at < 60
    test = lr_finder.RangeTest(list(rates), with_nan, lr_finder.smooth(with_nan), 0.001, "", 1.0, best_step=at)
    assert test.summary()["lr_at_min_loss"] == rates[at] and math.isfinite(test.summary()["min_smoothed_loss"])


def test_a_test_that_diverges_at_once_is_one_clear_line():
    with pytest.raises(PipelineError, match="diverged at once"):
        lr_finder.suggest([1e-5, 1e-4, 1e-3], [1.0, math.nan, math.nan], 10, 4)
    with pytest.raises(PipelineError, match="min < max"):
        lr_finder.sweep(1.0, 1e-5, 100)


def test_range_test_on_digits_leaves_the_model_untouched_and_is_repeatable(digits):
    images, target = digits
    x, y = images[:512, :, :, None], target[:512]
    params = shipped("train", seed=3, batch_size=32)

    def run():
        keras.utils.set_random_seed(3)
        model = build_model("simple_cnn", x.shape[1:], 10, params)
        before = [w.copy() for w in model.get_weights()]
        data = training.TrainData(x, y, x[:64], y[:64], [str(d) for d in range(10)])
        plan = plan_training(params, len(x), y[:64], 10)
        assert plan.learning_rate is None  # auto: open until the range test resolves it
        plan, test = training.resolve_learning_rate(model, data, params, plan)
        for a, b in zip(before, model.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)  # the test trains a copy
        return plan, test

    plan, test = run()
    assert plan.learning_rate == pytest.approx(test.learning_rate)
    assert AUTO["lr_test_min"] <= plan.learning_rate <= AUTO["lr_test_max"] / AUTO["lr_divisor"]
    assert plan.reasons["learning_rate"].startswith("auto: range test")
    assert plan.lr_range_test["steps_run"] == len(test.losses) <= AUTO["lr_test_steps"]
    assert min(test.smoothed) < test.losses[0]  # the loss fell before it rose: a real curve
    again, _ = run()
    assert again.learning_rate == plan.learning_rate  # seeded: the same choice for the same data and params


def test_a_number_in_params_wins_and_a_saved_decision_is_kept(tmp_path, digits):
    images, target = digits
    x, y = images[:128, :, :, None], target[:128]
    data = training.TrainData(x, y, x[:32], y[:32], [str(d) for d in range(10)])
    model = build_model("simple_cnn", x.shape[1:], 10, shipped("train"))
    fixed = shipped("train", learning_rate=0.003)
    plan, test = training.resolve_learning_rate(model, data, fixed, plan_training(fixed, 128, y[:32], 10))
    assert test is None and plan.learning_rate == 0.003 and plan.reasons["learning_rate"] == "set in params.yaml"
    saved = tmp_path / "learning_rate.json"
    training.save_learning_rate(saved, plan)
    auto = shipped("train")
    resumed, test = training.resolve_learning_rate(model, data, auto, plan_training(auto, 128, y[:32], 10), saved)
    assert test is None and resumed.learning_rate == 0.003  # a resumed training keeps its rate, no new test
