"""A fast, deterministic baseline fitted beside every network: logistic regression on thumbnails.

A CNN that loses to a linear model on 8x8 thumbnails of the same images is not trained
well (too few steps, a bad split, a broken input); without a baseline nobody would know,
because 0.7 looks like a number. scikit-learn's lbfgs solver is deterministic, so the
baseline's figures change only when the data does.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from imgclf.evaluate.metrics import classification_metrics, is_significant_drop, paired_comparison
from imgclf.io import PipelineError


def thumbnails(images: np.ndarray, size: int) -> np.ndarray:
    """Each (H, W, C) uint8 image shrunk to ``size`` x ``size`` (area averaging), flattened to floats in 0..1."""
    images = np.asarray(images)
    if len(images) == 0:
        return np.empty((0, size * size * images.shape[-1]))
    small = np.stack([cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA) for image in images])
    return small.reshape(len(images), -1).astype(np.float64) / 255.0


def fit(x: np.ndarray, y: np.ndarray, thumbnail: int, max_iter: int) -> Pipeline:
    """Standardised thumbnails into a multinomial logistic regression (lbfgs: deterministic).

    Stopping at ``max_iter`` short of convergence is still a fixed, reproducible model, so
    scikit-learn's ConvergenceWarning is not passed on to the user.
    """
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(thumbnails(x, thumbnail), np.asarray(y))


def fit_sample(y: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of at most ``limit`` images, stratified and seeded: a linear model on tiny thumbnails
    gains nothing from more (0.800 with 10,000 Fashion-MNIST images, 0.806 with 60,000) but time."""
    y = np.asarray(y)
    if len(y) <= limit:
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    stratify = y if np.unique(y, return_counts=True)[1].min() >= 2 else None  # a class of one: plain sample
    picked, _ = train_test_split(np.arange(len(y)), train_size=limit, stratify=stratify, random_state=seed)
    return np.sort(picked)


def gather(parts: list[tuple[np.ndarray, np.ndarray]], picked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``picked`` of the (images, labels) parts laid end to end, reading only those rows
    (the parts may be memory-mapped arrays far larger than memory)."""
    offsets = np.cumsum([0, *(len(y) for _, y in parts)])
    xs, ys = [], []
    for (x, y), start, stop in zip(parts, offsets[:-1], offsets[1:], strict=True):
        rows = picked[(picked >= start) & (picked < stop)] - start
        xs.append(np.asarray(x[rows]))
        ys.append(np.asarray(y)[rows])
    return np.concatenate(xs), np.concatenate(ys)


def evaluate(
    fit_parts: list[tuple[np.ndarray, np.ndarray]],
    x_test: np.ndarray,
    y_test: np.ndarray,
    network_pred: np.ndarray,
    class_names: list[str],
    params: dict,
) -> dict:
    """The ``baseline`` block of ``reports/eval/metrics.json``: fitted on ``fit_parts`` (train and val), its
    test accuracy and macro F1, and how the network compares on the same test images
    (``network_below_baseline``, with McNemar's p-value that the network is worse)."""
    thumbnail = int(params["thumbnail"])
    picked = fit_sample(np.concatenate([y for _, y in fit_parts]), int(params["max_fit_images"]), int(params["seed"]))
    x_fit, y_fit = gather(fit_parts, picked)
    if len(np.unique(y_fit)) < 2:
        raise PipelineError("the baseline needs images of at least two classes in train+val")
    model = fit(x_fit, y_fit, thumbnail, int(params["max_iter"]))
    proba = np.zeros((len(y_test), len(class_names)))
    proba[:, model.classes_] = model.predict_proba(thumbnails(x_test, thumbnail))
    metrics = classification_metrics(y_test, proba, class_names, top_k=1)  # only accuracy and F1 are kept
    comparison = paired_comparison(y_test, proba.argmax(axis=1), network_pred)
    return {
        "model": f"logistic regression on {thumbnail}x{thumbnail} thumbnails",
        "fit_images": len(picked),
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "network_below_baseline": bool(comparison["accuracy_drop"] > 0),
        "network_minus_baseline": 0.0 - comparison["accuracy_drop"],
        "p_value_network_worse": comparison["p_value"],
    }


def verdict(metrics: dict, versus: dict, params: dict) -> tuple[str | None, bool]:
    """(message, fail): a loud line when the network is below the baseline, and whether evaluate must
    fail: ``fail_below`` is set and the shortfall is more than noise (McNemar p < ``significance``),
    so one image in 27 never fails a run."""
    if not versus["network_below_baseline"]:
        return None, False
    shortfall = {"accuracy_drop": -versus["network_minus_baseline"], "p_value": versus["p_value_network_worse"]}
    significant = is_significant_drop(shortfall, 0.0, float(params["significance"]))
    message = (
        f"THE NETWORK IS BELOW THE BASELINE: test accuracy {metrics['accuracy']:.4f} < {versus['accuracy']:.4f} "
        f"for {versus['model']} on {metrics['samples']} images (McNemar p {versus['p_value_network_worse']:.2g}"
        f"{'' if significant else ', within noise'}; see reports/eval/summary.md)"
    )
    return message, bool(params["fail_below"]) and significant


def ship_verdict(metrics: dict, versus: dict, params: dict) -> dict:
    """Is the network fit to ship? ``{"fit_to_ship": bool, "reason": str, ...}``, which export copies
    into the model card, and promote, predict and the service honour.

    Not fit: test accuracy not above chance beyond noise (a one-sided binomial test against the
    largest class's share of the test set), or below the baseline beyond noise (McNemar p below
    ``significance``). A shortfall within noise is fit, with the numbers in the reason.
    """
    from scipy.stats import binomtest

    alpha = float(params["significance"])
    n = int(metrics["samples"])
    correct = round(float(metrics["accuracy"]) * n)
    shares = [c["support"] for c in metrics["per_class"].values()]
    chance = max(shares) / max(1, sum(shares))
    p_chance = float(binomtest(correct, n, chance, alternative="greater").pvalue) if n else 1.0
    shortfall = {"accuracy_drop": -versus["network_minus_baseline"], "p_value": versus["p_value_network_worse"]}
    below = versus["network_below_baseline"] and is_significant_drop(shortfall, 0.0, alpha)
    if p_chance >= alpha:
        fit, reason = (
            False,
            (
                f"test accuracy {metrics['accuracy']:.4f} on {n} images is not above chance ({chance:.3f}) beyond noise "
                f"(binomial p {p_chance:.2g})"
            ),
        )
    elif below:
        fit, reason = (
            False,
            (
                f"test accuracy {metrics['accuracy']:.4f} is below the baseline's {versus['accuracy']:.4f} beyond noise "
                f"(McNemar p {versus['p_value_network_worse']:.2g})"
            ),
        )
    else:
        fit, reason = (
            True,
            f"test accuracy {metrics['accuracy']:.4f} is above chance ({chance:.3f}) beyond noise"
            + (f" and not below the baseline ({versus['accuracy']:.4f}) beyond noise"),
        )
    return {
        "fit_to_ship": fit,
        "reason": reason,
        "test_accuracy": metrics["accuracy"],
        "chance_accuracy": round(chance, 6),
        "p_value_not_above_chance": p_chance,
        "baseline_accuracy": versus["accuracy"],
        "p_value_network_worse": versus["p_value_network_worse"],
        "significance": alpha,
    }
