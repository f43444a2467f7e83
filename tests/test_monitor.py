"""The monitor (python -m imgclf.monitor) on prediction logs whose answer is known: one like the test
split (no alert), one shifted (alerts, exit 1), feedback below the bar, corrupt rows, no log at all."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from imgclf.ship.export import reference_statistics
from imgclf.ship.monitor import main
from imgclf.ship.prediction_log import PredictionLog

REPO_ROOT = Path(__file__).resolve().parent.parent
LABELS = ["cat", "dog", "bird"]


def _probabilities(count: int, rng, shares=(0.5, 0.3, 0.2), confidence=(0.6, 0.99)) -> np.ndarray:
    """Answers whose top class follows ``shares`` and whose top probability is uniform in ``confidence``."""
    top = rng.choice(len(LABELS), size=count, p=shares)
    p = np.zeros((count, len(LABELS)))
    best = rng.uniform(*confidence, size=count)
    p[:] = ((1 - best) / (len(LABELS) - 1))[:, None]
    p[np.arange(count), top] = best
    return p


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A folder with params.yaml, a model card whose test split is ``_probabilities(2000)``, and a log."""
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    reference = {"test_unknown_rate": 0.04, **reference_statistics(_probabilities(2000, rng))}
    card = {"labels": LABELS, "unknown": {"variants": {"int8": reference}}}
    (tmp_path / "card.json").write_text(json.dumps(card))
    return tmp_path, rng


def _serve(log: PredictionLog, probabilities: np.ndarray, unknown_share: float, rng) -> list[dict]:
    results = []
    for i, p in enumerate(probabilities):
        best = int(p.argmax())
        results.append({"file": f"{i}.png", "label": LABELS[best], "probability": float(p[best]),
                        "unknown": bool(rng.random() < unknown_share), "unknown_score": 0.1})  # fmt: skip
    for start in range(0, len(results), 50):
        chunk = results[start : start + 50]
        log.append(chunk, {j: f"{start + j}".encode() for j in range(len(chunk))}, "m", "int8")
    return results


def _monitor(folder: Path) -> tuple[int, dict, str]:
    code = main(["--log", str(folder / "logs" / "p.db"), "--card", str(folder / "card.json"), "--variant", "int8"])
    summary = json.loads((folder / "reports" / "monitor" / "summary.json").read_text())
    return code, summary, (folder / "reports" / "monitor" / "report.html").read_text()


def test_a_log_like_the_test_split_raises_no_alert(world):
    folder, rng = world
    log = PredictionLog(folder / "logs" / "p.db")
    answered = _serve(log, _probabilities(600, rng), 0.04, rng)
    for result in answered[:30]:
        log.feedback(result["id"], result["label"])
    code, summary, page = _monitor(folder)
    assert code == 0 and summary["alerts"] == [] and summary["requests"] == 600
    assert summary["class_shift"]["p_value"] > 0.001 and summary["confidence_shift"]["p_value"] > 0.001
    assert summary["feedback"] == {"answers": 30, "correct": 30, "corrected": 0, "accuracy": 1.0,
                                   "accuracy_ci95": summary["feedback"]["accuracy_ci95"]}  # fmt: skip
    assert summary["feedback"]["accuracy_ci95"][0] < 1.0  # 30 answers: the interval is honest about it
    assert "No alert." in page and page.count("data:image/png;base64,") == 3
    assert "http://" not in page and "https://" not in page


def test_a_shifted_log_and_poor_feedback_raise_alerts_and_exit_1(world):
    folder, rng = world
    log = PredictionLog(folder / "logs" / "p.db")
    shifted = _probabilities(600, rng, shares=(0.1, 0.1, 0.8), confidence=(0.34, 0.6))
    answered = _serve(log, shifted, 0.4, rng)
    for i, result in enumerate(answered[:40]):  # 10 of 40 confirmed: 25 %
        right = result["label"] if i % 4 == 0 else next(label for label in LABELS if label != result["label"])
        log.feedback(result["id"], right)
    code, summary, page = _monitor(folder)
    assert code == 1
    alerts = " | ".join(summary["alerts"])
    assert "unknown rate" in alerts and "answered classes differ" in alerts and "confidence differs" in alerts
    assert "accuracy on feedback 25.0%" in alerts
    assert "4 alert(s)" in page


def test_few_answers_give_figures_but_no_distribution_alert(world):
    folder, rng = world
    log = PredictionLog(folder / "logs" / "p.db")
    _serve(log, _probabilities(20, rng, shares=(0.0, 0.0, 1.0)), 1.0, rng)
    code, summary, _ = _monitor(folder)
    assert code == 0 and summary["requests"] == 20 and "no distribution alerts yet" in summary["note"]


def test_corrupt_rows_are_skipped_and_named_and_a_missing_log_is_one_line(world, capsys):
    folder, rng = world
    log = PredictionLog(folder / "logs" / "p.db")
    _serve(log, _probabilities(150, rng), 0.04, rng)
    with sqlite3.connect(folder / "logs" / "p.db") as db:  # rows another tool (or a bug) wrote
        db.execute("UPDATE predictions SET label = 'zebra' WHERE file = '3.png'")
        db.execute("UPDATE predictions SET probability = 7 WHERE file = '4.png'")
    code, summary, _ = _monitor(folder)
    assert code == 0 and summary["requests"] == 148 and len(summary["skipped_rows"]) == 2
    assert "label 'zebra'" in summary["skipped_rows"][0] or "label 'zebra'" in summary["skipped_rows"][1]
    assert main(["--log", str(folder / "nope.db"), "--card", str(folder / "card.json")]) == 2
    assert "imgclf.monitor: error: prediction log" in capsys.readouterr().err
    (folder / "garbage.db").write_bytes(b"this is not a database" * 100)
    assert main(["--log", str(folder / "garbage.db"), "--card", str(folder / "card.json")]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_only_the_variant_asked_for_and_its_latest_model_are_judged(world):
    folder, rng = world
    log = PredictionLog(folder / "logs" / "p.db")
    _serve(log, _probabilities(30, rng), 0.0, rng)  # int8, model "m"
    log.append([{"file": "x.png", "label": "cat", "probability": 0.9, "unknown": True}], {0: b"x"}, "m", "float32")
    log.append([{"file": "y.png", "label": "dog", "probability": 0.9, "unknown": False}], {0: b"y"}, "m2", "int8")
    code, summary, _ = _monitor(folder)
    assert code == 0 and summary["model"] == "m2" and summary["requests"] == 1 and summary["other_rows"] == 31
