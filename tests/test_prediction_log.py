"""The prediction log (imgclf.ship.prediction_log): ids, captures within a budget, feedback, and two
processes appending at once, or one killed mid-write, losing nothing committed."""

from __future__ import annotations

import multiprocessing
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.ship.prediction_log import PredictionLog, UnknownPrediction, read

PNG = b"\x89PNG\r\n\x1a\n"


def _results(count: int, unknown=False, prefix: str = "f") -> list[dict]:
    return [
        {"file": f"{prefix}{i}.png", "label": "cat", "probability": 0.9, "unknown": unknown, "unknown_score": 0.5}
        for i in range(count)
    ]


def test_every_answer_gets_an_id_and_a_row_and_errors_get_neither(tmp_path):
    log = PredictionLog(tmp_path / "logs" / "p.db")
    results = [*_results(2), {"file": "bad.txt", "error": "readable: not an image"}]
    log.append(results, {0: PNG + b"a", 1: PNG + b"b", 2: b"text"}, "models/m.tflite", "int8")
    assert len(results[0]["id"]) == 32 and results[0]["id"] != results[1]["id"] and "id" not in results[2]
    rows = read(log.path, "SELECT id, file, label, unknown, image_sha256, captured FROM predictions ORDER BY rowid")
    assert [r[1] for r in rows] == ["f0.png", "f1.png"] and rows[0][0] == results[0]["id"]
    assert rows[0][3] == 0 and len(rows[0][4]) == 64 and rows[0][5] is None  # capture is off by default


def test_capture_keeps_unknown_or_all_within_the_budget_oldest_first(tmp_path):
    log = PredictionLog(tmp_path / "p.db", capture="unknown", capture_max_mb=2500 / 1024 / 1024)
    known, unknown = _results(1), _results(1, unknown=True, prefix="u")
    log.append(known, {0: PNG + b"k" * 900}, "m", "int8")
    log.append(unknown, {0: PNG + b"u" * 900}, "m", "int8")
    assert sorted(p.name for p in (tmp_path / "captured").iterdir())[0].endswith(".png")
    assert len(list((tmp_path / "captured").iterdir())) == 1  # only the unknown one
    log = PredictionLog(tmp_path / "p.db", capture="all", capture_max_mb=2500 / 1024 / 1024)
    for letter in "abc":  # 3 x 908 bytes > 2,500: the oldest (the unknown one) goes
        log.append(_results(1, prefix=letter), {0: PNG + letter.encode() * 900}, "m", "int8")
    kept = read(log.path, "SELECT file, captured FROM predictions ORDER BY rowid")
    assert [captured is not None for _, captured in kept] == [False, False, False, True, True]
    assert len(list((tmp_path / "captured").iterdir())) == 2
    log.append(_results(1, prefix="same"), {0: PNG + b"c" * 900}, "m", "int8")  # same bytes: stored once
    assert len(list((tmp_path / "captured").iterdir())) == 2
    too_big = PNG + b"x" * 3000
    log.append(_results(1, prefix="big"), {0: too_big}, "m", "int8")  # over the whole budget: logged, not kept
    assert read(log.path, "SELECT captured FROM predictions WHERE file = 'big0.png'") == [(None,)]


def test_feedback_is_correct_or_corrected_and_an_unknown_id_is_refused(tmp_path):
    log = PredictionLog(tmp_path / "p.db")
    results = _results(2)
    log.append(results, {0: PNG, 1: PNG + b"2"}, "m", "int8")
    assert log.feedback(results[0]["id"], "cat") == "correct"
    assert log.feedback(results[1]["id"], "dog") == "corrected"
    with pytest.raises(UnknownPrediction):
        log.feedback("no-such-id", "cat")
    assert read(log.path, "SELECT outcome FROM feedback ORDER BY id") == [("correct",), ("corrected",)]
    with pytest.raises(ValueError, match=r"serve\.capture must be one of off, unknown, all"):
        PredictionLog(tmp_path / "p.db", capture="some")


def _append_many(path: str, prefix: str, requests: int, start) -> None:
    start.wait()  # both processes begin together, on a store neither has created yet
    log = PredictionLog(path, capture="all")
    for r in range(requests):
        log.append(
            _results(3, prefix=f"{prefix}{r}-"), {i: PNG + f"{prefix}{r}{i}".encode() for i in range(3)}, "m", "v"
        )


def test_two_processes_appending_at_once_lose_nothing_and_never_interleave_a_request(tmp_path):
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    path = str(tmp_path / "fresh" / "p.db")
    workers = [context.Process(target=_append_many, args=(path, p, 100, start)) for p in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    rows = read(path, "SELECT file FROM predictions ORDER BY rowid")
    assert len(rows) == 600 and len({r[0] for r in rows}) == 600
    for first in range(0, 600, 3):  # a request's three rows are consecutive
        assert len({rows[first + i][0].rsplit("-", 1)[0] for i in range(3)}) == 1
    assert len(list((tmp_path / "fresh" / "captured").iterdir())) == 600


CHILD = """
import sys
from imgclf.ship.prediction_log import PredictionLog
log = PredictionLog(sys.argv[1], capture="all")
r = 0
while True:
    results = [{"file": f"r{r}-{i}", "label": "cat", "probability": 0.5, "unknown": False} for i in range(3)]
    log.append(results, {i: b"\\x89PNG" + f"{r}.{i}".encode() * 50 for i in range(3)}, "m", "v")
    print(r, flush=True)
    r += 1
"""


def test_a_server_killed_mid_write_loses_at_most_the_request_in_flight(tmp_path):
    path = tmp_path / "p.db"
    root = Path(__file__).resolve().parent.parent
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=root, stdout=subprocess.PIPE, text=True)
    committed = -1
    for line in child.stdout:  # no timing: kill once 200 requests are reported committed
        committed = int(line)
        if committed >= 200:
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=60)
    child.stdout.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        files = [r[0] for r in db.execute("SELECT file FROM predictions")]
    requests = {f.split("-")[0] for f in files}
    assert len(files) == 3 * len(requests) and len(requests) >= committed + 1  # whole requests only, none lost
    PredictionLog(path).append(_results(1), {0: PNG}, "m", "v")  # and the log keeps working
