"""Evaluation metrics from class probabilities, computed with scikit-learn.

Only the expected calibration error is ours: scikit-learn has the reliability
curve (``calibration_curve``) but not the multi-class ECE summary. Comparisons of two
models on one test set (the export gate, the baseline) go through
:func:`paired_comparison`, so that one image in 27 is not mistaken for a real loss.
"""

from __future__ import annotations

import math

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


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, class_names: list[str], top_k: int) -> dict:
    """The numbers that go under ``"test"`` in ``reports/eval/metrics.json`` (a few reach the headline)."""
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
    if len(present) == len(labels) == 2:  # scikit-learn wants the positive class's score alone
        result["roc_auc_macro"] = skm.roc_auc_score(y_true, proba[:, 1])
    elif len(present) == len(labels):
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
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    if isinstance(value, float | np.floating):
        return round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


Z95 = 1.959964


def _wilson(successes: int, n: int) -> tuple[float, float]:
    """Wilson score interval of a proportion (95%)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = p + Z95**2 / (2 * n)
    spread = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n))
    return (centre - spread) / (1 + Z95**2 / n), (centre + spread) / (1 + Z95**2 / n)


def _newcombe_paired_interval(both: int, lost: int, gained: int, neither: int) -> tuple[float, float]:
    """95% interval of a paired accuracy difference, Newcombe's hybrid score method (1998, no. 10).

    Unlike the textbook normal interval it neither collapses to a point when the two models never
    disagree nor excludes zero for a handful of images that McNemar's exact test calls noise.
    """
    n = both + lost + gained + neither
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (both + lost) / n, (both + gained) / n  # the reference's and the other's accuracy
    l1, u1 = _wilson(both + lost, n)
    l2, u2 = _wilson(both + gained, n)
    denominator = (both + lost) * (gained + neither) * (both + gained) * (lost + neither)
    phi = (both * neither - lost * gained) / math.sqrt(denominator) if denominator else 0.0
    drop = p1 - p2
    below = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    above = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return drop - below, drop + above


def paired_comparison(y_true: np.ndarray, reference_pred: np.ndarray, other_pred: np.ndarray) -> dict:
    """How much worse ``other`` is than ``reference`` on the same images, and whether that is noise.

    Only the images where the two disagree carry information (McNemar): ``lost`` = reference right and
    other wrong, ``gained`` = the reverse. ``p_value`` is the exact one-sided McNemar test (a binomial
    test on the discordant images) that ``other`` is really worse; ``drop_ci95`` is Newcombe's score
    interval of the paired accuracy difference. One image lost in 27 gives p = 0.5 (noise); 80 lost
    and 20 gained among 10,000 give p < 1e-9 (a real drop of 0.6 points). With four or fewer
    discordant images no drop reaches p < 0.05: such a test set is too small to tell.
    """
    from scipy.stats import binomtest

    y_true, reference_pred, other_pred = (np.asarray(a) for a in (y_true, reference_pred, other_pred))
    n = len(y_true)
    reference_right, other_right = reference_pred == y_true, other_pred == y_true
    both = int(np.sum(reference_right & other_right))
    lost = int(np.sum(reference_right & ~other_right))
    gained = int(np.sum(~reference_right & other_right))
    discordant = lost + gained
    p_value = binomtest(lost, discordant, 0.5, alternative="greater").pvalue if discordant else 1.0
    result = _rounded(
        {
            "samples": n,
            "accuracy_drop": (lost - gained) / n if n else 0.0,
            "drop_ci95": list(_newcombe_paired_interval(both, lost, gained, n - both - discordant)),
            "lost": lost,
            "gained": gained,
        }
    )
    result["accuracy_drop"] += 0.0  # no -0.0 in reports
    result["p_value"] = float(f"{p_value:.4g}")  # significant digits: 5.6e-10 must not read as 0
    return result


def is_significant_drop(comparison: dict, max_drop: float, alpha: float) -> bool:
    """A drop counts when it is both larger than ``max_drop`` and unlikely to be noise (p < ``alpha``)."""
    return comparison["accuracy_drop"] > max_drop + 1e-12 and comparison["p_value"] < alpha


def evaluation_summary(metrics: dict, versus: dict, plan: dict | None, ship: dict | None = None) -> str:
    """reports/eval/summary.md: what a person reads first, with the numbers that qualify the others."""
    verdict = "**below the baseline**" if versus["network_below_baseline"] else "not below the baseline"
    lines = ["# Evaluation", ""]
    if ship is not None:
        lines += [
            ("**Fit to ship**: " if ship["fit_to_ship"] else "**NOT FIT TO SHIP**: ") + ship["reason"] + ".",
            "",
        ]
    lines += [
        f"Test images: {metrics['samples']}. With so few, one image is {1 / metrics['samples']:.2%} of accuracy."
        if metrics["samples"] < 1000
        else f"Test images: {metrics['samples']}.",
        "",
        "| model | accuracy | macro F1 |",
        "|---|---|---|",
        f"| network | {metrics['accuracy']:.4f} | {metrics['macro_f1']:.4f} |",
        f"| baseline: {versus['model']} | {versus['accuracy']:.4f} | {versus['macro_f1']:.4f} |",
        "",
        f"The network is {verdict} (difference {versus['network_minus_baseline']:+.4f}; McNemar p-value that "
        f"it is worse: {versus['p_value_network_worse']:.3g}).",
    ]
    if plan:
        lines += [
            "",
            "## Training plan",
            "",
            f"Batch {plan['batch_size']}, {plan['epochs']} epochs of {plan['steps_per_epoch']} steps "
            f"({plan['total_steps']} in all), early stopping "
            + (f"patience {plan['early_stopping_patience']}" if plan["early_stopping_patience"] else "off")
            + (f", peak learning rate {plan['learning_rate']:.3g}." if plan.get("learning_rate") else "."),
            *(f"- Warning: {warning}" for warning in plan["warnings"]),
        ]
    return "\n".join(lines) + "\n"


# -- what DVC compares: a headline of numbers, and the curves behind the ROC and calibration plots --------

HEADLINE_TEST_KEYS = ("accuracy", "macro_f1", "log_loss", "ece")


def headline(
    metrics: dict, versus: dict, verdict: dict, validation: dict | None, plan: dict | None, epochs_run: int | None
) -> dict:
    """``reports/metrics.json``: the dozen numbers people compare across runs (``dvc exp show``,
    ``dvc metrics diff``), flat, short-named, numbers only, so that ``dvc exp show --only-changed``
    fits a terminal. The test split's figures go unprefixed (``accuracy``, ``macro_f1``, ...); the
    detail (per class, weighted averages, ROC AUC, the baseline's p-value, the plan's reasons) is in
    ``reports/eval/metrics.json``, git-tracked and not a DVC metric: 200 columns of per-class figures
    and prose made ``dvc exp show`` unreadable.

    ``fit_to_ship`` is 1 or 0 (evaluate's verdict); ``images_kept`` and ``images_quarantined`` come
    from validate; ``learning_rate`` is the one the plan settled on (``auto`` in params says nothing),
    ``epochs_run`` and ``stall_restarts`` what the training did."""
    result = {key: metrics[key] for key in HEADLINE_TEST_KEYS if metrics.get(key) is not None}
    top_k = next((key for key in metrics if key.startswith("top_") and key.endswith("_accuracy")), None)
    if top_k and metrics[top_k] is not None:
        result[top_k] = metrics[top_k]
    result |= {
        "test_images": int(metrics["samples"]),
        "baseline_accuracy": versus["accuracy"],
        "fit_to_ship": int(bool(verdict["fit_to_ship"])),
    }
    if validation:
        result |= {
            "images_kept": int(validation["rows_kept"]),
            "images_quarantined": int(validation["rows_quarantined"]),
        }
    if plan:
        result |= {
            "learning_rate": float(f"{plan['learning_rate']:.4g}"),
            "epochs_run": int(epochs_run if epochs_run is not None else plan["epochs"]),
            "stall_restarts": len(plan.get("restarts") or []),
        }
    return result


def roc_points(y_true: np.ndarray, proba: np.ndarray, points: int = 101) -> dict[str, list]:
    """The micro-averaged ROC curve (every image, every class one-vs-rest) on a fixed grid of false
    positive rates: a small, deterministic table for ``dvc plots`` whatever the test set's size."""
    y_true = np.asarray(y_true)
    onehot = np.eye(proba.shape[1])[y_true]
    fpr, tpr, _ = skm.roc_curve(onehot.ravel(), proba.ravel())
    grid = np.linspace(0.0, 1.0, points)
    return {"fpr": _rounded(grid.tolist()), "tpr": _rounded(np.interp(grid, fpr, tpr).tolist())}


def reliability_points(y_true: np.ndarray, proba: np.ndarray, bins: int = 15) -> dict[str, list]:
    """The reliability curve behind the ECE (same equal-width bins): per non-empty bin of top-class
    confidence, the mean confidence, the accuracy and the images in it."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = {"confidence": [], "accuracy": [], "images": []}
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            rows["confidence"].append(float(confidence[in_bin].mean()))
            rows["accuracy"].append(float(correct[in_bin].mean()))
            rows["images"].append(int(in_bin.sum()))
    return _rounded(rows)
