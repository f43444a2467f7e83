"""Evaluation metrics from class probabilities, computed with scikit-learn.

Only the expected calibration error is ours: scikit-learn has the reliability
curve (``calibration_curve``) but not the multi-class ECE summary.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def top_k_accuracy(y_true: np.ndarray, proba: np.ndarray, k: int) -> float:
    """scikit-learn's top-k accuracy; it needs k < n_classes and more than two classes, the rest is trivial."""
    n_classes = proba.shape[1]
    if k >= n_classes:
        return 1.0
    if n_classes <= 2:  # k == 1
        return float(skm.accuracy_score(y_true, proba.argmax(axis=1)))
    return float(skm.top_k_accuracy_score(y_true, proba, k=k, labels=np.arange(n_classes)))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, class_names: list[str], top_k: int = 3) -> dict:
    """The numbers that go under ``"test"`` in ``reports/metrics.json``."""
    y_true = np.asarray(y_true)
    labels = np.arange(len(class_names))
    y_pred = proba.argmax(axis=1)
    k = max(1, min(int(top_k), len(labels)))
    result = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        f"top_{k}_accuracy": top_k_accuracy(y_true, proba, k),
        "log_loss": skm.log_loss(y_true, proba, labels=labels),
        "ece": expected_calibration_error(y_true, proba),
        "samples": len(y_true),
    }
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        result |= {f"{average}_precision": precision, f"{average}_recall": recall, f"{average}_f1": f1}
    present = np.unique(y_true)
    if len(present) == len(labels):
        result["roc_auc_macro"] = skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=labels)
    else:  # AUC is undefined for classes absent from the test split
        result["roc_auc_macro"] = None
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    result["per_class"] = {
        name: {"precision": p, "recall": r, "f1": f, "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
    }
    return _rounded(result)


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, float | np.floating):
        return round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value
