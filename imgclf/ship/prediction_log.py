"""The service's memory: every prediction it answered, the images it kept, and what people said about them.

One SQLite file (``serve.log``; ``logs/predictions.db`` by default): SQLite because appends from
concurrent requests, threads or ``uvicorn --workers`` processes, must neither interleave nor get
lost, and a database's transactions give exactly that; a JSON-lines file would need its own
locking. Each request's predictions go in one transaction (WAL journal, ``synchronous=NORMAL``):
a ``kill -9`` of the server loses at most the requests still in flight, never a committed one or
the file (power loss may lose the last few commits; fine for a log).

Tables: ``predictions`` (id, time, model, variant, file, label, probability, unknown, unknown_score,
image_sha256, captured), ``feedback`` (prediction id, label, outcome ``correct`` or ``corrected``,
time; the latest per prediction counts), ``captures`` (the kept images, by content hash).

Images are kept by ``serve.capture``: ``off``, ``unknown`` (only answers called unknown) or ``all``,
under ``<log folder>/captured/<sha256>.<ext>``, within ``serve.capture_max_mb``: past it the oldest
captures are deleted first (their predictions stay, ``captured`` set back to null).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path

from imgclf.io import PipelineError, file_lock

CAPTURE = ("off", "unknown", "all")
OUTCOMES = ("correct", "corrected")
SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    model TEXT NOT NULL,
    variant TEXT NOT NULL,
    file TEXT NOT NULL,
    label TEXT NOT NULL,
    probability REAL NOT NULL,
    unknown INTEGER,
    unknown_score REAL,
    image_sha256 TEXT NOT NULL,
    captured TEXT
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prediction_id TEXT NOT NULL REFERENCES predictions(id),
    label TEXT NOT NULL,
    outcome TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_prediction ON feedback(prediction_id);
CREATE INDEX IF NOT EXISTS predictions_captured ON predictions(captured);
CREATE TABLE IF NOT EXISTS captures (
    sha256 TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    time REAL NOT NULL
);
"""
SUFFIXES = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"GIF8": ".gif", b"BM": ".bmp", b"RIFF": ".webp",
            b"II*\x00": ".tif", b"MM\x00*": ".tif"}  # fmt: skip


class UnknownPrediction(LookupError):
    """Feedback named a prediction id the log does not hold."""


def _suffix(data: bytes) -> str:
    return next((suffix for magic, suffix in SUFFIXES.items() if data.startswith(magic)), ".img")


class PredictionLog:
    """Appends predictions and feedback; safe to share between threads and between processes."""

    def __init__(self, path: str | Path, capture: str = "off", capture_max_mb: float = 500.0):
        if capture not in CAPTURE:
            raise ValueError(f"serve.capture must be one of {', '.join(CAPTURE)}, not {capture!r}")
        self.path = Path(path)
        self.capture = capture
        self.capture_max_bytes = int(capture_max_mb * 1024 * 1024)
        self.captured = self.path.parent / "captured"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._transaction() as db:  # first use by two processes at once: IF NOT EXISTS, in a transaction
            for statement in filter(str.strip, SCHEMA.split(";")):
                db.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            # switching a new file to WAL does not wait on a busy database (SQLite answers "locked" at
            # once), so connections are set up one at a time, under an flock beside the file
            with file_lock(self.path.with_name(self.path.name + ".lock"), f"prediction log {self.path}", 60):
                db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
                db.execute("PRAGMA busy_timeout = 30000")
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
            self._local.db = db
        return db

    class _Transaction:
        def __init__(self, db: sqlite3.Connection):
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")  # the write lock now: no deadlock upgrading a read later
            return self.db

        def __exit__(self, kind, value, traceback) -> None:
            try:
                self.db.execute("COMMIT" if kind is None else "ROLLBACK")
            except sqlite3.Error:
                if self.db.in_transaction:  # a failed COMMIT (disk full) must not keep the write lock
                    self.db.execute("ROLLBACK")
                raise

    def _transaction(self) -> PredictionLog._Transaction:
        return self._Transaction(self._connect())

    # -- predictions ---------------------------------------------------------------------------

    def wants(self, unknown: bool | None) -> bool:
        """Whether an image with this answer is kept, by ``serve.capture``."""
        return self.capture == "all" or (self.capture == "unknown" and bool(unknown))

    def _write(self, name: str, data: bytes) -> None:
        """The image under captured/, atomically; the name is its content's hash, so writing it again is
        harmless (a file left by a transaction that rolled back is reused, never wrong)."""
        self.captured.mkdir(parents=True, exist_ok=True)
        target = self.captured / name
        temporary = target.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            temporary.write_bytes(data)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)

    def _keep(self, db: sqlite3.Connection, sha: str, data: bytes, evicted: list[Path]) -> str | None:
        """The image under captured/ (written once per content), within the budget; its relative path.
        Files evicted to stay in budget are appended to ``evicted``, deleted only once the row commits."""
        if len(data) > self.capture_max_bytes:
            return None
        name = f"{sha}{_suffix(data)}"
        relative = f"captured/{name}"
        known = db.execute("SELECT path FROM captures WHERE sha256 = ?", (sha,)).fetchone()
        if known:
            if not (self.path.parent / known[0]).is_file():
                self._write(Path(known[0]).name, data)  # deleted by hand meanwhile: put it back
            return known[0]
        self._write(name, data)
        db.execute("INSERT INTO captures VALUES (?, ?, ?, ?)", (sha, relative, len(data), time.time()))
        used = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM captures").fetchone()[0]
        while used > self.capture_max_bytes:  # oldest first, never the one just kept
            oldest = db.execute(
                "SELECT sha256, path, bytes FROM captures WHERE sha256 != ? ORDER BY time, rowid LIMIT 1", (sha,)
            ).fetchone()
            if oldest is None:
                break
            db.execute("DELETE FROM captures WHERE sha256 = ?", (oldest[0],))
            db.execute("UPDATE predictions SET captured = NULL WHERE captured = ?", (oldest[1],))
            evicted.append(self.path.parent / oldest[1])
            used -= oldest[2]
        return relative

    def append(self, results: list[dict], images: dict[int, bytes], model: str, variant: str) -> None:
        """Give each answered result an ``id`` and log it; ``images[i]`` is the upload of ``results[i]``.
        One transaction: all of a request's predictions are logged, or none."""
        now, evicted, kept = time.time(), [], set()
        with self._transaction() as db:
            for i, result in enumerate(results):
                if "label" not in result:
                    continue
                data = images[i]
                sha = hashlib.sha256(data).hexdigest()
                captured = self._keep(db, sha, data, evicted) if self.wants(result.get("unknown")) else None
                if captured:
                    kept.add(self.path.parent / captured)
                result["id"] = uuid.uuid4().hex
                unknown = result.get("unknown")
                db.execute(
                    "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (result["id"], now, model, variant, result["file"], result["label"], result["probability"],
                     None if unknown is None else int(unknown), result.get("unknown_score"), sha, captured),
                )  # fmt: skip
        for path in set(evicted) - kept:  # only now: a transaction that rolled back still has its files
            path.unlink(missing_ok=True)

    # -- feedback --------------------------------------------------------------------------------

    def feedback(self, prediction_id: str, label: str) -> str:
        """Record the correct class for a prediction; its outcome (``correct`` or ``corrected``)."""
        with self._transaction() as db:
            row = db.execute("SELECT label FROM predictions WHERE id = ?", (prediction_id,)).fetchone()
            if row is None:
                raise UnknownPrediction(prediction_id)
            outcome = "correct" if row[0] == label else "corrected"
            db.execute(
                "INSERT INTO feedback (prediction_id, label, outcome, time) VALUES (?, ?, ?, ?)",
                (prediction_id, label, outcome, time.time()),
            )
        return outcome

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def read(path: str | Path, query: str, parameters: tuple = ()) -> list[tuple]:
    """Rows of a read-only query on a log (the monitor and the feedback export read it this way);
    a one-line PipelineError when there is no log or it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"prediction log {path} not found: serve with serve.log set, or pass --log")
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)) as db:
            return db.execute(query, parameters).fetchall()
    except sqlite3.Error as error:
        raise PipelineError(f"prediction log {path}: cannot be read ({error})") from None
