"""Out-of-distribution answers: is this image like anything the model was trained to tell apart?

A classifier answers every image with one of its classes, a wallpaper or a blank frame included.
Each prediction therefore carries a score (higher: less like the training data) and ``unknown``,
the score beyond a threshold. Four detectors, all fitted on images the model did not train on
(the validation split) and all computed from what the exported model returns (its probabilities
and, as a second output, its penultimate features), so they run anywhere the model runs, with
NumPy only:

- ``max_softmax``: 1 - the top probability (Hendrycks & Gimpel, 2017).
- ``energy``: -logsumexp of the logits, the last layer's weights applied to the features (Liu et
  al., 2020); the softmax alone cannot give it back.
- ``mahalanobis``: the smallest Mahalanobis distance to a class mean, with one shared, shrunk
  covariance (Lee et al., 2018; Ledoit-Wolf shrinkage, so 50 images of 256 features still fit).
- ``knn``: the distance to the k-th nearest reference image, features L2-normalised (Sun et al.,
  2022); it ships the reference features (float16), so it is the largest: 20,000 images of 128
  features are 1.5 MB compressed. The shipped default: on Fashion-MNIST it separated digits, noise and
  photographs best (``benchmarks/ood.py``; docs/serving.md has the table).

The detector is fitted on the training split's features (the class structure the network learned,
with enough images to estimate it: fitted on a few hundred validation images, the Mahalanobis
detector called 10 % of unseen digits unknown at a 4 % target) and its threshold is set on the
validation split, images neither the network nor the detector saw: the ``1 - unknown_rate``
quantile of their scores (:func:`calibrate`). With too few validation images for a quantile,
:func:`fit_with_threshold` scores every image out of fold instead. The export measures the rate on
the test split and reports it.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DETECTORS = ("max_softmax", "energy", "mahalanobis", "knn")
NEEDS_FEATURES = ("energy", "mahalanobis", "knn")
ARRAYS = {
    "max_softmax": (),
    "energy": ("kernel", "bias"),
    "mahalanobis": ("means", "whiten"),
    "knn": ("reference", "k"),
}


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))[:, 0]


def _normalised(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


@dataclass
class Detector:
    """A fitted detector: its name, the arrays it needs, and the threshold above which an image is unknown."""

    name: str
    arrays: dict[str, np.ndarray]
    threshold: float = float("inf")
    _reference: np.ndarray | None = field(default=None, repr=False, compare=False)  # knn's, as float32

    def _knn_reference(self) -> np.ndarray:
        if self._reference is None:
            self._reference = np.asarray(self.arrays["reference"], dtype=np.float32)
        return self._reference

    def score(self, probabilities: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        """Higher means less like the fitting images; one float per row."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if self.name == "max_softmax":
            return 1.0 - probabilities.max(axis=1)
        if features is None:
            raise ValueError(f"the {self.name} detector needs the model's features (a second output)")
        features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        if self.name == "energy":
            return -_logsumexp(features @ self.arrays["kernel"] + self.arrays["bias"])
        if self.name == "mahalanobis":
            whitened = features @ self.arrays["whiten"]  # (f - m) P (f - m) = |f W - m W|^2 with P = W W^T
            centres = self.arrays["means"] @ self.arrays["whiten"]
            squared = (whitened**2).sum(1)[:, None] - 2 * whitened @ centres.T + (centres**2).sum(1)[None, :]
            return np.sqrt(np.maximum(squared.min(axis=1), 0.0))
        if self.name == "knn":
            reference = self._knn_reference()
            k = min(int(self.arrays["k"]), len(reference))
            scores = []
            for start in range(0, len(features), 1024):  # bounded memory: 1,024 x reference distances at a time
                cosine = _normalised(features[start : start + 1024]).astype(np.float32) @ reference.T
                distance = np.sqrt(np.maximum(2.0 - 2.0 * cosine, 0.0))
                scores.append(np.partition(distance, k - 1, axis=1)[:, k - 1])
            return np.concatenate(scores) if scores else np.zeros(0)
        raise ValueError(f"unknown detector {self.name!r}; known: {', '.join(DETECTORS)}")

    def unknown(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def save(self, path: Path) -> None:
        """A compressed .npz beside the model (NumPy only to read it back, no pickle)."""
        from imgclf.io import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(  # knn's ReLU features are mostly zeros: 5 MB -> 1.5 MB
                    handle,
                    name=np.array(self.name),
                    threshold=np.array(self.threshold),
                    **{f"array_{k}": v for k, v in self.arrays.items()},
                )

    @classmethod
    def load(cls, path: Path) -> Detector:
        """The detector :meth:`save` wrote; OSError when it cannot be read, ValueError when it is not one."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k.removeprefix("array_"): data[k] for k in data.files if k.startswith("array_")}
                detector = cls(str(data["name"]), arrays, float(data["threshold"]))
        except (KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:  # a damaged or foreign file
            raise ValueError(f"not a saved detector ({type(error).__name__}: {error})") from None
        if detector.name not in ARRAYS:
            raise ValueError(f"not a saved detector: unknown detector {detector.name!r}")
        if missing := sorted(set(ARRAYS[detector.name]) - set(arrays)):
            raise ValueError(f"not a saved {detector.name} detector: no {', '.join(missing)}")
        return detector


def fit(
    name: str,
    probabilities: np.ndarray,
    features: np.ndarray | None,
    labels: np.ndarray,
    last_layer: tuple[np.ndarray, np.ndarray] | None = None,
    knn_k: int = 1,
    knn_reference: int = 20000,
    seed: int = 0,
) -> Detector:
    """A detector fitted on these images (no threshold yet: :func:`fit_with_threshold` sets it).

    ``labels`` are the images' true classes (the class means); ``last_layer`` the (kernel, bias) of the
    network's last Dense layer, for the energy score."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; known: {', '.join(DETECTORS)}")
    if name == "max_softmax":
        return Detector(name, {})
    if features is None:
        raise ValueError(f"the {name} detector needs the model's features (a second output)")
    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if name == "energy":
        if last_layer is None:
            raise ValueError("the energy detector needs the last layer's kernel and bias")
        kernel, bias = last_layer
        return Detector(name, {"kernel": np.asarray(kernel, np.float32), "bias": np.asarray(bias, np.float32)})
    if name == "mahalanobis":
        from sklearn.covariance import LedoitWolf

        classes = np.unique(labels)
        means = np.zeros((int(probabilities.shape[1]), features.shape[1]))
        for c in classes:
            means[c] = features[labels == c].mean(axis=0)
        centred = features - means[labels]
        precision = LedoitWolf().fit(centred).precision_
        precision = (precision + precision.T) / 2
        values, vectors = np.linalg.eigh(precision)
        whiten = vectors * np.sqrt(np.maximum(values, 0.0))  # P = W W^T
        present = np.zeros(len(means), dtype=bool)
        present[classes] = True
        # a class with no fitting image has no mean: put it far away, so it is never the nearest
        means[~present] = means[present].mean(axis=0) + 1e6
        return Detector(name, {"means": means.astype(np.float32), "whiten": whiten.astype(np.float32)})
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(features), size=min(knn_reference, len(features)), replace=False))
    return Detector(name, {"reference": _normalised(features[picks]).astype(np.float16), "k": np.array(knn_k)})


def calibrate(
    detector: Detector, probabilities: np.ndarray, features: np.ndarray | None, unknown_rate: float
) -> Detector:
    """Set the threshold so that ``unknown_rate`` of these held-out in-distribution images score above it."""
    detector.threshold = _threshold(detector.score(probabilities, features), unknown_rate)
    return detector


def _threshold(scores: np.ndarray, unknown_rate: float) -> float:
    """The score above which ``unknown_rate`` of these in-distribution scores lie (inf when none is finite)."""
    finite = scores[np.isfinite(scores)]
    return float(np.quantile(finite, 1.0 - unknown_rate)) if len(finite) else float("inf")


def fit_with_threshold(
    name: str,
    probabilities: np.ndarray,
    features: np.ndarray | None,
    labels: np.ndarray,
    unknown_rate: float,
    folds: int = 5,
    seed: int = 0,
    **options,
) -> tuple[Detector, np.ndarray]:
    """The detector fitted on all these images, its threshold at the ``1 - unknown_rate`` quantile of
    their out-of-fold scores, and those scores."""
    count = len(labels)
    folds = max(2, min(folds, count))
    order = np.random.default_rng(seed).permutation(count)
    fold_of = np.empty(count, dtype=int)
    fold_of[order] = np.arange(count) % folds
    scores = np.zeros(count)
    for fold in range(folds):
        held = fold_of == fold
        part = fit(name, probabilities[~held], None if features is None else features[~held], labels[~held],
                   seed=seed, **options)  # fmt: skip
        scores[held] = part.score(probabilities[held], None if features is None else features[held])
    detector = fit(name, probabilities, features, labels, seed=seed, **options)
    detector.threshold = _threshold(scores, unknown_rate)
    return detector, scores
