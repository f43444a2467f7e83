"""The baseline beside every model: deterministic, scored on the test split, and the flag when the network loses."""

import numpy as np

from imgclf import baseline
from imgclf.io import load_params
from imgclf.paths import REPO_ROOT

PARAMS = load_params("evaluate", REPO_ROOT / "params.yaml")["baseline"]


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
