"""The unknown detectors (imgclf.ship.ood) on data whose answer is known: Gaussian classes, far points."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.ship import ood

CLASSES, DIM = 4, 16


def _world(seed: int = 0):
    """Four Gaussian classes in feature space, a softmax layer that separates them, and a sampler."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, (CLASSES, DIM))
    kernel, bias = (centres / 3.0).T.astype(np.float32), np.zeros(CLASSES, np.float32)

    def draw(count: int, far: bool = False):
        labels = rng.integers(0, CLASSES, count)
        features = rng.normal(0.0, 8.0, (count, DIM)) if far else centres[labels] + rng.normal(0.0, 1.0, (count, DIM))
        logits = features @ kernel + bias
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return probabilities, features, labels

    return draw, (kernel, bias)


@pytest.mark.parametrize("name", ood.DETECTORS)
def test_each_detector_scores_far_points_above_new_in_distribution_ones(name, tmp_path):
    draw, last_layer = _world()
    p, f, y = draw(1000)
    detector, oof = ood.fit_with_threshold(name, p, f, y, 0.05, folds=5, seed=0, last_layer=last_layer, knn_k=5)
    assert len(oof) == 1000 and np.isfinite(detector.threshold)
    p_new, f_new, _ = draw(2000)
    p_far, f_far, _ = draw(500, far=True)
    new, far = detector.score(p_new, f_new), detector.score(p_far, f_far)
    # the threshold holds on new images: about 5 % of them unknown (binomial sd 0.5 %, wide margin)
    assert 0.02 <= detector.unknown(new).mean() <= 0.09
    if name in ("mahalanobis", "knn"):  # the logits cannot see distance: a far point can have big logits
        assert detector.unknown(far).mean() >= 0.95
    detector.save(tmp_path / "d.npz")
    again = ood.Detector.load(tmp_path / "d.npz")
    assert again.name == name and again.threshold == detector.threshold
    assert np.allclose(again.score(p_far, f_far), far, rtol=1e-5, atol=1e-5)


def test_feature_detectors_need_features_and_say_so():
    draw, _ = _world()
    p, f, y = draw(50)
    with pytest.raises(ValueError, match="needs the model's features"):
        ood.fit("mahalanobis", p, None, y)
    detector = ood.fit("mahalanobis", p, f, y)
    with pytest.raises(ValueError, match="needs the model's features"):
        detector.score(p, None)
    with pytest.raises(ValueError, match="unknown detector 'oddball'"):
        ood.fit("oddball", p, f, y)
    assert ood.fit("max_softmax", p, None, y).score(p, None).shape == (50,)


def test_a_class_missing_from_the_fitting_images_is_never_the_nearest():
    draw, _ = _world()
    p, f, y = draw(400)
    keep = y != 3
    detector = ood.fit("mahalanobis", p[keep], f[keep], y[keep])  # probabilities still have 4 columns
    scores = detector.score(p, f)
    assert np.isfinite(scores).all() and scores[keep].mean() < scores[~keep].mean()


def test_few_images_still_fit_with_shrinkage():
    """50 images of 16 features (photo sets' validation splits are small): Ledoit-Wolf keeps it invertible."""
    draw, _ = _world(seed=1)
    p, f, y = draw(30)
    detector, oof = ood.fit_with_threshold("mahalanobis", p, f, y, 0.1, folds=5)
    assert np.isfinite(oof).all() and np.isfinite(detector.threshold)


def test_a_damaged_detector_file_is_one_value_error(tmp_path):
    draw, _ = _world()
    p, f, y = draw(50)
    good = tmp_path / "good.npz"
    ood.fit("knn", p, f, y).save(good)
    data = good.read_bytes()
    damaged = {
        "not_a_zip": b"not an npz",
        "truncated": data[: len(data) // 2],
        "flipped": data[:200] + bytes(b ^ 0xFF for b in data[200:260]) + data[260:],  # inside a compressed member
    }
    for name, content in damaged.items():
        (tmp_path / f"{name}.npz").write_bytes(content)
        with pytest.raises(ValueError):
            ood.Detector.load(tmp_path / f"{name}.npz")
    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))  # an npz, but no detector in it
    with pytest.raises(ValueError, match="not a saved detector"):
        ood.Detector.load(tmp_path / "foreign.npz")
    np.savez(tmp_path / "hollow.npz", name=np.array("energy"), threshold=np.array(1.0))  # loads, cannot score
    with pytest.raises(ValueError, match="not a saved energy detector: no bias, kernel"):
        ood.Detector.load(tmp_path / "hollow.npz")
    np.savez(tmp_path / "other.npz", name=np.array("oddball"), threshold=np.array(1.0))
    with pytest.raises(ValueError, match="unknown detector 'oddball'"):
        ood.Detector.load(tmp_path / "other.npz")
    with pytest.raises(OSError):
        ood.Detector.load(tmp_path / "missing.npz")
