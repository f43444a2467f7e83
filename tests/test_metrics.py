import numpy as np
import pytest
from sklearn import metrics as skm

from imgclf.evaluate.metrics import classification_metrics, expected_calibration_error

CLASSES = ["cat", "dog", "bird"]
Y_TRUE = np.array([0, 0, 1, 1, 2, 2, 2, 0])
PROBA = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.3, 0.6, 0.1],  # wrong
        [0.2, 0.7, 0.1],
        [0.1, 0.8, 0.1],
        [0.1, 0.1, 0.8],
        [0.5, 0.2, 0.3],  # wrong
        [0.05, 0.05, 0.9],
        [0.9, 0.05, 0.05],
    ]
)


def test_metrics_match_scikit_learn_on_hand_made_predictions():
    result = classification_metrics(Y_TRUE, PROBA, CLASSES, top_k=2)
    assert result["accuracy"] == 0.75
    assert result["samples"] == 8
    # true class in the top 2 for every row but row 1? row 1: top-2 = dog, cat -> contains cat
    assert result["top_2_accuracy"] == pytest.approx(skm.top_k_accuracy_score(Y_TRUE, PROBA, k=2))
    assert result["log_loss"] == pytest.approx(skm.log_loss(Y_TRUE, PROBA), abs=1e-6)
    assert result["macro_f1"] == pytest.approx(skm.f1_score(Y_TRUE, PROBA.argmax(1), average="macro"), abs=1e-6)
    assert result["weighted_recall"] == pytest.approx(0.75)
    assert result["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(Y_TRUE, PROBA, multi_class="ovr"), abs=1e-6)
    assert result["per_class"]["dog"] == {
        "precision": pytest.approx(2 / 3, abs=1e-6),
        "recall": 1.0,
        "f1": 0.8,
        "support": 2,
    }
    assert result["per_class"]["bird"]["recall"] == pytest.approx(2 / 3, abs=1e-6)


def test_expected_calibration_error_by_hand():
    # two bins used with bins=2: confidences <=0.5 -> bin 0, >0.5 -> bin 1
    y_true = np.array([0, 1, 0, 1])
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.45, 0.55]])
    # bin 1 holds all four rows (max conf 0.9, 0.8, 0.6, 0.55): accuracy 2/4, mean confidence 0.7125
    assert expected_calibration_error(y_true, proba, bins=2) == pytest.approx(abs(0.5 - 0.7125))
    perfect = np.eye(2)[y_true]
    assert expected_calibration_error(y_true, perfect) == 0.0


def test_auc_is_null_when_a_class_is_missing_from_the_test_split():
    result = classification_metrics(np.array([0, 1, 1]), PROBA[:3], CLASSES, top_k=3)
    assert result["roc_auc_macro"] is None
    assert result["per_class"]["bird"]["support"] == 0


def test_paired_comparison_counts_lost_and_gained_images():
    from imgclf.evaluate.metrics import paired_comparison

    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    reference = np.array([0, 1, 2, 0, 1, 2, 1, 1])  # 7 right
    other = np.array([0, 1, 0, 0, 2, 2, 0, 1])  # loses two, gains one: 6 right
    result = paired_comparison(y, reference, other)
    assert (result["lost"], result["gained"], result["samples"]) == (2, 1, 8)
    assert result["accuracy_drop"] == pytest.approx(1 / 8)
    assert result["p_value"] == pytest.approx(0.5)  # P(X >= 2) for X ~ Binomial(3, 1/2)
    low, high = result["drop_ci95"]
    assert low < 0 < result["accuracy_drop"] < high  # eight images cannot tell
    assert paired_comparison(y, reference, reference)["p_value"] == 1.0


def test_binary_classification_metrics():
    y = np.array([0, 1, 1, 0, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.1, 0.9]])
    result = classification_metrics(y, proba, ["cat", "dog"], top_k=3)
    assert result["accuracy"] == pytest.approx(0.8)
    assert result["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))
    assert result["top_2_accuracy"] == 1.0  # k is capped at the number of classes


def test_the_headline_is_a_dozen_numbers_and_the_plot_tables_are_small():
    from imgclf.evaluate.metrics import headline, reliability_points, roc_points

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    proba = rng.dirichlet(np.ones(4), 500)
    proba[np.arange(500), y] += 1.0
    proba /= proba.sum(axis=1, keepdims=True)
    metrics = classification_metrics(y, proba, ["a", "b", "c", "d"], top_k=3)
    versus = {"accuracy": 0.5, "macro_f1": 0.5, "model": "logistic regression", "network_minus_baseline": 0.3}
    plan = {"learning_rate": 0.0097252, "epochs": 20, "restarts": [{"learning_rate": 0.1}]}
    validation = {"rows_kept": 600, "rows_quarantined": 3, "modes": {"L": 600}}
    top = headline(metrics, versus, {"fit_to_ship": True, "reason": "fine"}, validation, plan, epochs_run=12)
    assert top["accuracy"] == metrics["accuracy"] and top["top_3_accuracy"] == metrics["top_3_accuracy"]
    assert top["fit_to_ship"] == 1 and (top["images_kept"], top["images_quarantined"]) == (600, 3)
    assert (top["learning_rate"], top["epochs_run"], top["stall_restarts"]) == (0.009725, 12, 1)
    assert top["test_images"] == 500 and top["baseline_accuracy"] == 0.5

    def leaves(tree):
        return [v for value in tree.values() for v in (leaves(value) if isinstance(value, dict) else [value])]

    assert len(leaves(top)) <= 15 and all(type(v) in (int, float) for v in leaves(top))

    roc = roc_points(y, proba)
    assert len(roc["fpr"]) == 101 and roc["tpr"][0] >= 0 and roc["tpr"][-1] == 1.0
    assert all(a <= b for a, b in zip(roc["tpr"], roc["tpr"][1:], strict=False))  # a ROC curve never falls
    curve = reliability_points(y, proba)
    assert sum(curve["images"]) == 500 and all(0 <= a <= 1 for a in curve["accuracy"])
