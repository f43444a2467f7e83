"""Likely label errors: out-of-fold probabilities, then confident learning (Northcutt et al., JAIR 2021).

A network scores the images it trained on with the labels it was taught, so its own confidence
cannot tell a mislabelled photo from a hard one. Instead each labelled image gets class
probabilities from a model that never saw *its* label: a logistic regression on the trained
network's penultimate features, fitted on the other folds (k-fold, stratified, seeded). Confident
learning then sets one threshold per class, the mean out-of-fold probability of that class over the
images labelled with it, and counts an image as "confidently" class j when its probability of j
reaches j's threshold (the largest such j when several do). An image confidently of another class
than its label is a likely label error, and so is one whose out-of-fold prediction disagrees with
its label: when the features separate the classes well the thresholds sit at 0.9-0.99, and a
flipped photo whose true class gets 0.96 against a threshold of 0.97 is confidently nothing (on a
photo set with 24 flipped labels, confident learning alone found 18). They are ranked by how little
probability the image's own label gets (self-confidence, the ranking the paper found best), highest
score (most likely wrong) first. No cleanlab (AGPL): a few lines of numpy over scikit-learn.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)
COLUMNS = ["row", "given", "suggested", "score", "given_probability", "suggested_probability", "reason"]


def out_of_fold_probabilities(
    features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int, seed: int, max_iter: int = 300
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (n, num_classes) for every row from a model fitted without that row.

    Returns ``(proba, scored)``: ``scored`` is False for rows of a class with fewer than two images
    (no fold can both train on the class and hold one of them out); their probabilities are NaN.
    ``folds`` shrinks to the smallest class's count when that is smaller (at least 2).
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes)
    scored = counts[labels] >= 2
    proba = np.full((len(labels), num_classes), np.nan, dtype=np.float64)
    idx = np.flatnonzero(scored)
    if len(np.unique(labels[idx])) < 2:
        return proba, np.zeros(len(labels), dtype=bool)
    k = int(min(folds, counts[counts >= 2].min()))
    splitter = StratifiedKFold(n_splits=max(k, 2), shuffle=True, random_state=seed)
    x = np.asarray(features, dtype=np.float32)
    unconverged = False
    for fit_rows, held_rows in splitter.split(idx, labels[idx]):
        fit_idx, held_idx = idx[fit_rows], idx[held_rows]
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=1.0))
        with warnings.catch_warnings(record=True) as caught:  # one line for all folds, not sklearn's paragraph each
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(x[fit_idx], labels[fit_idx])
        unconverged |= any(issubclass(w.category, ConvergenceWarning) for w in caught)
        fold_proba = np.zeros((len(held_idx), num_classes))
        fold_proba[:, model.classes_] = model.predict_proba(x[held_idx])
        proba[held_idx] = fold_proba
    if unconverged:
        log.info(
            "out-of-fold logistic regression stopped at audit.max_iter=%d before converging (its scores are still usable)",
            max_iter,
        )
    return proba, scored


def class_thresholds(proba: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class j: the mean probability of j over the images labelled j (confident learning's t_j);
    NaN for a class with no scored image."""
    thresholds = np.full(num_classes, np.nan)
    for j in range(num_classes):
        rows = (labels == j) & ~np.isnan(proba[:, j])
        if rows.any():
            thresholds[j] = proba[rows, j].mean()
    return thresholds


def find_label_issues(proba: np.ndarray, labels: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """Confident learning's off-diagonal, plus the out-of-fold disagreements, most likely wrong first.

    One row per flagged image (``row`` indexes ``proba``): the suggested class is the one it is
    confidently of, else its out-of-fold prediction; ``score`` = 1 - the probability of its given
    label (higher: more likely wrong).
    """
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = len(class_names)
    thresholds = class_thresholds(proba, labels, num_classes)
    valid = ~np.isnan(proba).any(axis=1)
    above = (proba >= thresholds[None, :]) & valid[:, None] & ~np.isnan(thresholds)[None, :]
    masked = np.where(above, proba, -1.0)
    confident = masked.argmax(axis=1)
    off_diagonal = above.any(axis=1) & (confident != labels)
    predicted = np.where(valid, np.nan_to_num(proba, nan=-1.0).argmax(axis=1), labels)
    flagged = np.flatnonzero(off_diagonal | (predicted != labels))
    given_p = proba[flagged, labels[flagged]]
    suggested = np.where(off_diagonal[flagged], confident[flagged], predicted[flagged])
    suggested_p = proba[flagged, suggested]
    names = np.asarray(class_names, dtype=object)
    reasons = [
        (
            f"out-of-fold p({names[s]})={ps:.2f} reaches {names[s]}'s threshold {thresholds[s]:.2f}"
            if confident_of_it
            else f"out-of-fold prediction {names[s]} (p={ps:.2f}, under its threshold {thresholds[s]:.2f})"
        )
        + f"; p({names[g]})={pg:.2f} against its threshold {thresholds[g]:.2f}"
        for s, ps, g, pg, confident_of_it in zip(
            suggested, suggested_p, labels[flagged], given_p, off_diagonal[flagged], strict=True
        )
    ]
    table = pd.DataFrame(
        {
            "row": flagged,
            "given": names[labels[flagged]],
            "suggested": names[suggested],
            "score": np.round(1.0 - given_p, 6),
            "given_probability": np.round(given_p, 6),
            "suggested_probability": np.round(suggested_p, 6),
            "reason": reasons,
        },
        columns=COLUMNS,
    )
    # most likely wrong first; ties by the suggestion's probability, then by row (deterministic)
    return table.sort_values(
        ["score", "suggested_probability", "row"], ascending=[False, False, True], kind="mergesort"
    ).reset_index(drop=True)


def ranking_quality(flagged_rows, true_rows) -> dict:
    """Precision among the top k flagged (k = number of true errors) and recall within the top 2k."""
    truth = set(int(r) for r in true_rows)
    ranked = [int(r) for r in flagged_rows]
    k = len(truth)
    if k == 0:
        return {"k": 0, "flagged": len(ranked), "precision_at_k": None, "recall_at_2k": None}
    top_k, top_2k = ranked[:k], ranked[: 2 * k]
    return {
        "k": k,
        "flagged": len(ranked),
        "precision_at_k": round(sum(r in truth for r in top_k) / k, 4),
        "recall_at_2k": round(sum(r in truth for r in top_2k) / k, 4),
    }
