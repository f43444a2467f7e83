"""The baseline beside every model: deterministic, scored on the test split, and the flag when the network loses."""

import numpy as np
import pytest

from imgclf.evaluate import baseline
from imgclf.io import PipelineError
from imgclf.params import load_section
from imgclf.paths import REPO_ROOT

PARAMS = load_section("evaluate", REPO_ROOT / "params.yaml")["baseline"]


def _split(digits):
    images, target = digits
    x = np.repeat(np.repeat(images[:, :, :, None], 2, axis=1), 2, axis=2)  # 16x16x1, real handwriting
    return x[:1400], target[:1400], x[1400:], target[1400:]


def test_the_baseline_is_strong_on_digits_and_deterministic(digits):
    x_fit, y_fit, x_test, y_test = _split(digits)
    names = [str(d) for d in range(10)]
    perfect = y_test.copy()
    first = baseline.evaluate(
        [(x_fit[:1000], y_fit[:1000]), (x_fit[1000:], y_fit[1000:])], x_test, y_test, perfect, names, PARAMS
    )
    again = baseline.evaluate(
        [(x_fit[:1000], y_fit[:1000]), (x_fit[1000:], y_fit[1000:])], x_test, y_test, perfect, names, PARAMS
    )
    assert first == again
    assert first["accuracy"] > 0.9 and first["macro_f1"] > 0.9
    assert first["fit_images"] == 1400 and first["model"] == "logistic regression on 8x8 thumbnails"
    assert first["network_below_baseline"] is False and first["network_minus_baseline"] > 0


def test_a_network_worse_than_the_baseline_is_flagged(digits):
    x_fit, y_fit, x_test, y_test = _split(digits)
    guessing = np.zeros_like(y_test)  # a collapsed network: one class for everything
    result = baseline.evaluate(
        [(x_fit[:1000], y_fit[:1000]), (x_fit[1000:], y_fit[1000:])],
        x_test,
        y_test,
        guessing,
        [str(d) for d in range(10)],
        PARAMS,
    )
    assert result["network_below_baseline"] is True
    assert result["network_minus_baseline"] < -0.5 and result["p_value_network_worse"] < 1e-6


def test_thumbnails_of_rgb_images():
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 48, 3), dtype=np.uint8)
    features = baseline.thumbnails(images, 8)
    assert features.shape == (3, 8 * 8 * 3) and features.dtype == np.float64
    assert 0 <= features.min() and features.max() <= 1


def test_large_sets_are_sampled_stratified_and_seeded():
    y = np.repeat(np.arange(4), [5000, 3000, 1500, 500])
    picked = baseline.fit_sample(y, 1000, seed=1)
    assert len(picked) == 1000 and np.array_equal(picked, baseline.fit_sample(y, 1000, seed=1))
    assert np.bincount(y[picked]).tolist() == [500, 300, 150, 50]
    assert len(baseline.fit_sample(y[:800], 1000, seed=1)) == 800
    parts = [(np.arange(10)[:, None] * 10, np.arange(10)), (np.arange(10, 15)[:, None] * 10, np.arange(10, 15))]
    x, labels = baseline.gather(parts, np.array([1, 9, 10, 14]))
    assert labels.tolist() == [1, 9, 10, 14] and x[:, 0].tolist() == [10, 90, 100, 140]


def _versus(accuracy, baseline_accuracy, p):
    return {
        "model": "logistic regression on 8x8 thumbnails",
        "accuracy": baseline_accuracy,
        "macro_f1": baseline_accuracy,
        "network_below_baseline": accuracy < baseline_accuracy,
        "network_minus_baseline": accuracy - baseline_accuracy,
        "p_value_network_worse": p,
    }


def test_the_verdict_fails_only_on_a_real_shortfall_and_only_when_asked():
    metrics = {"accuracy": 0.963, "samples": 27, "macro_f1": 0.96}
    one_image = _versus(0.963, 1.0, 0.5)
    message, fail = baseline.verdict(metrics, one_image, {**PARAMS, "fail_below": True})
    assert message.startswith("THE NETWORK IS BELOW THE BASELINE") and "within noise" in message and not fail
    real = _versus(0.5, 0.95, 1e-6)
    assert baseline.verdict(metrics, real, {**PARAMS, "fail_below": True})[1] is True
    assert baseline.verdict(metrics, real, {**PARAMS, "fail_below": False})[1] is False
    assert baseline.verdict(metrics, _versus(1.0, 0.9, 1.0), {**PARAMS, "fail_below": True}) == (None, False)


def test_binary_and_missing_classes_and_a_single_class(digits):
    x_fit, y_fit, x_test, y_test = _split(digits)
    keep = y_fit < 2  # fit on digits 0 and 1 only; the test split keeps all ten
    result = baseline.evaluate(
        [(x_fit[keep], y_fit[keep])], x_test, y_test, y_test, [str(d) for d in range(10)], PARAMS
    )
    assert 0 < result["accuracy"] < 0.3 and result["network_below_baseline"] is False
    binary = y_test < 2
    result = baseline.evaluate(
        [(x_fit[keep], y_fit[keep])], x_test[binary], y_test[binary], y_test[binary], ["0", "1"], PARAMS
    )
    assert result["accuracy"] > 0.95
    with pytest.raises(PipelineError, match="at least two classes"):
        baseline.evaluate(
            [(x_fit[y_fit == 3], y_fit[y_fit == 3])], x_test, y_test, y_test, [str(d) for d in range(10)], PARAMS
        )


def test_the_summary_shows_sizes_both_models_and_plan_warnings():
    from imgclf.evaluate.metrics import evaluation_summary

    plan = {"batch_size": 16, "epochs": 143, "steps_per_epoch": 7, "total_steps": 1001, "early_stopping_patience": 0}
    text = evaluation_summary(
        {"accuracy": 0.9, "macro_f1": 0.89, "samples": 30},
        _versus(0.9, 0.95, 0.3),
        {**plan, "warnings": ["the validation split has 8 images"]},
    )
    assert "Test images: 30. With so few, one image is 3.33% of accuracy." in text
    assert (
        "| network | 0.9000 | 0.8900 |" in text and "| baseline: logistic regression on 8x8 thumbnails | 0.9500" in text
    )
    assert "**below the baseline**" in text and "early stopping off" in text
    assert "- Warning: the validation split has 8 images" in text


def _metrics(accuracy: float, n: int = 150, classes: int = 5) -> dict:
    per_class = {f"c{i}": {"support": n // classes} for i in range(classes)}
    return {"accuracy": accuracy, "samples": n, "per_class": per_class}


def _against(baseline_accuracy: float, network_accuracy: float, p_worse: float) -> dict:
    return {
        "accuracy": baseline_accuracy,
        "network_below_baseline": network_accuracy < baseline_accuracy,
        "network_minus_baseline": network_accuracy - baseline_accuracy,
        "p_value_network_worse": p_worse,
    }


def test_a_model_at_chance_is_not_fit_to_ship_even_above_a_weak_baseline():
    """The issue's 128 px case: 0.20 on 150 images of 5 classes."""
    verdict = baseline.ship_verdict(_metrics(0.20), _against(0.18, 0.20, 1.0), PARAMS)
    assert not verdict["fit_to_ship"] and "not above chance (0.200)" in verdict["reason"]
    assert verdict["p_value_not_above_chance"] > 0.4


def test_below_the_baseline_beyond_noise_is_not_fit_within_noise_it_is():
    beyond = baseline.ship_verdict(_metrics(0.60), _against(0.80, 0.60, 0.001), PARAMS)
    assert not beyond["fit_to_ship"] and "below the baseline's 0.8000 beyond noise" in beyond["reason"]
    within = baseline.ship_verdict(_metrics(0.78), _against(0.80, 0.78, 0.4), PARAMS)
    assert within["fit_to_ship"]
    good = baseline.ship_verdict(_metrics(0.93), _against(0.25, 0.93, 1.0), PARAMS)
    assert good["fit_to_ship"] and good["chance_accuracy"] == pytest.approx(0.2)
