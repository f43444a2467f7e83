"""Parallel runs never fail on each other: two processes that start at the same moment on a fresh
tracking store, a fresh Optuna study storage and one reports folder.

Each test starts two real processes (``python -m tests.test_parallel_runs <role> ...``), waits until
both have done their imports and set-up and then releases them together: each child prints ``ready``
and blocks reading a line from its stdin until the test writes one to both. No sleep orders anything:
where one process must be inside a step while the other does another, they say so on stdout and the
test tells the other to go on (a handshake), so those runs interleave the same way. Where the race
is two processes doing the same first step (creating a fresh store), both are released into it
together, which without the lock failed every time it was tried (3 of 3).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 120  # for all of a test's children: a stuck one fails the test instead of hanging it
REPORTS = ("trials.csv", "best_params.json", "optimization_history.png")
STUDY_ROUNDS = 5  # fresh optuna.db files the two searches create at once
LOOPS = 20  # free-running rounds of the reports test, after its deterministic step


# -- the test's side: start, release together, hand shake -------------------------------------------


class Child:
    """A child process driven line by line: ``expect`` reads its next line, ``tell`` writes one."""

    def __init__(self, role: str, *args: str, cwd: Path, env: dict[str, str] | None = None):
        child_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
        child_env |= {"PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.name = args[0] if args else role
        self.log = cwd / f"{self.name}.stderr"
        with self.log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.test_parallel_runs", role, *args],
                cwd=cwd,
                env=child_env | (env or {}),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )

    def expect(self, word: str) -> str:
        line = self.process.stdout.readline()
        if not line.startswith(word):
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"{self.name}: expected {word!r}, got {line!r} (exit {self.process.poll()}):\n"
                + self.log.read_text(errors="replace")[-4000:]
            )
        return line.removeprefix(word).strip()

    def tell(self, word: str) -> None:
        self.process.stdin.write(word + "\n")
        self.process.stdin.flush()

    def finish(self) -> str:
        """Its last line (a JSON result), after it exits with status 0."""
        out, _ = self.process.communicate()  # the watchdog of children() bounds it
        assert self.process.returncode == 0, (
            f"{self.name} exited {self.process.returncode}:\n{self.log.read_text(errors='replace')}"
        )
        return out.strip().splitlines()[-1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.communicate(timeout=10)


@contextlib.contextmanager
def children(*started: Child):
    """The children, killed when the block ends, or after CHILD_TIMEOUT_S: a child stuck (on a lock, say)
    then ends its pipe, and the test fails with its stderr instead of hanging."""
    import threading

    watchdog = threading.Timer(CHILD_TIMEOUT_S, lambda: [child.process.kill() for child in started])
    watchdog.start()
    try:
        yield started
    finally:
        watchdog.cancel()
        for child in started:
            child.stop()


def release_together(*started: Child, word: str = "go") -> None:
    """Both children are blocked reading stdin: one line each wakes them within microseconds."""
    for child in started:
        child.expect("ready")
    for child in started:
        child.tell(word)


# -- the tests ---------------------------------------------------------------------------------------


def test_two_trainings_create_one_fresh_tracking_store_at_once_and_both_runs_are_kept(tmp_path):
    """``dvc queue start -j 2`` on a fresh clone: two trainings, each in its own temporary copy, log to
    the workspace's mlflow.db (DVC_ROOT), which neither finds. Both create it at the same moment (MLflow's
    schema and our experiment); both runs must be there afterwards, in one experiment."""
    from mlflow.tracking import MlflowClient

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    copies = {name: tmp_path / "exps" / name for name in ("first", "second")}
    for copy in copies.values():
        copy.mkdir(parents=True)
    env = {"DVC_ROOT": str(workspace)}
    with children(*(Child("train", name, str(copy), cwd=copy, env=env) for name, copy in copies.items())) as started:
        release_together(*started)
        results = {child.name: json.loads(child.finish()) for child in started}

    assert (workspace / "mlflow.db").exists() and not any((copy / "mlflow.db").exists() for copy in copies.values())
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("imgclf")
    assert {r["experiment_id"] for r in results.values()} == {experiment.experiment_id}
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert sorted(e.name for e in client.search_experiments()) == ["Default", "imgclf"]
    assert experiment.artifact_location == (workspace / "mlruns").as_uri()
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(r["run_id"] for r in results.values())
    assert {r.info.run_name: r.data.params["process"] for r in runs} == {"first": "first", "second": "second"}
    assert all(r.info.status == "FINISHED" for r in runs)


def test_two_searches_open_one_fresh_study_at_once_and_each_logs_only_its_own_reports(tmp_path):
    """Two ``imgclf.train.tune`` processes started together on a fresh clone.

    First they create the Optuna sqlite storage (optuna.db, tune.storage null) and join one study at the
    same moment, STUDY_ROUNDS times, each time in a fresh clone: both must join, as its processes 1
    and 2. Then each writes reports/tune/ and logs its reports to MLflow while the other writes into
    that folder. Deterministic step: one process is half way through writing a report (its
    ``.optimization_history.tmp-*.png`` is in the folder) while the other publishes its own; then both
    publish LOOPS more times against each other. Each run must hold exactly its own three reports (its
    last round's), and the folder the three reports, each whole, and nothing else."""
    import hashlib
    from urllib.parse import unquote, urlparse

    workspace = tmp_path / "workspace"
    folder = workspace / "reports" / "tune"
    names = ("first", "second")
    env = {"MLFLOW_ALLOW_FILE_STORE": "true"}  # MLflow 3's file store, "in maintenance mode"
    with children(*(Child("search", name, str(workspace), cwd=tmp_path, env=env) for name in names)) as started:
        first, second = started
        for clone in range(STUDY_ROUNDS):  # both create optuna.db and join the study at once
            release_together(first, second)
            joined = {child.name: int(child.expect("joined")) for child in started}
            assert sorted(joined.values()) == [1, 2], f"clone {clone}: {joined}"
        for child in started:  # each has its run and its reports written
            child.expect("ready")
        second.tell("hold")  # second: inside atomic_path, its temporary file in the folder
        second.expect("holding")
        first.tell("publish")  # first publishes meanwhile
        first.expect("published")
        second.tell("go on")
        second.expect("published")
        for child in started:  # both publish LOOPS more times, against each other
            child.tell("loop")
        results = {child.name: json.loads(child.finish()) for child in started}

    finals = {}
    for name, result in results.items():
        logged = Path(unquote(urlparse(result["artifacts"]).path))  # the run's tune/ in its local store
        assert logged.is_relative_to(tmp_path / f"mlruns-{name}")
        contents = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in logged.iterdir()}
        assert contents == result["reports"], f"{name}'s run holds files it did not write"
        finals[name] = result["reports"]
    assert sorted(path.name for path in folder.iterdir()) == sorted(REPORTS)  # no temporary file left
    for path in folder.iterdir():  # each report whole: the last round of one process or the other
        assert hashlib.sha256(path.read_bytes()).hexdigest() in {finals[name][path.name] for name in names}


def test_an_experiment_another_process_created_meanwhile_is_joined(tmp_path):
    """Against a server (no lock of ours), two processes may both find no experiment and both create
    it: the second's RESOURCE_ALREADY_EXISTS means "read it again", not a failed training."""
    from types import SimpleNamespace

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

    from imgclf.team import tracking

    made = SimpleNamespace(experiment_id="7", name="imgclf", tags=dict(tracking.EXPERIMENT_KIND))

    class Server:  # the other process created the experiment between our look-up and our create
        looked_up = 0

        def get_experiment_by_name(self, name):
            self.looked_up += 1
            return None if self.looked_up == 1 else made

        def create_experiment(self, name, artifact_location, tags):
            assert artifact_location is None  # a server chooses where its artifacts go
            raise MlflowException(f"Experiment '{name}' already exists.", error_code=RESOURCE_ALREADY_EXISTS)

        def set_experiment_tag(self, *args):
            raise AssertionError("the experiment already has its tags")

    assert tracking._experiment(Server(), "imgclf", "http://127.0.0.1:5000") == "7"


def test_the_store_lock_is_a_file_beside_a_sqlite_store_and_nothing_for_a_server(tmp_path):
    from imgclf.io import PipelineError
    from imgclf.team import tracking

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    with tracking.store_lock(uri):
        assert (tmp_path / "store" / "mlflow.db.lock").exists()
        # flock locks belong to an open file: a second open of the lock file, even in this process, waits
        with pytest.raises(PipelineError, match=r"MLflow store sqlite:///.*: .*/mlflow\.db\.lock held for 0 s"):
            with tracking.store_lock(uri, timeout_s=0.2):
                pass
    with tracking.store_lock(uri, timeout_s=0.2):  # released
        pass
    for other in ("http://127.0.0.1:5000", "postgresql://u@db/mlflow", "sqlite://", "sqlite:///:memory:"):
        assert tracking.sqlite_file(other) is None
        with tracking.store_lock(other, timeout_s=0):
            pass
    assert tracking.sqlite_file("sqlite:///mlflow.db") == Path("mlflow.db")  # relative: to the working directory


# -- the children ------------------------------------------------------------------------------------


def _ready() -> str:
    print("ready", flush=True)
    return sys.stdin.readline().strip()


def _say(word: str) -> str:
    print(word, flush=True)
    return sys.stdin.readline().strip()


def child_train(name: str, root: str) -> None:
    """A training's MLflow set-up, as the train stage does it (DVC_ROOT is the workspace)."""
    import mlflow

    from imgclf.team import tracking

    backup = Path(root) / "backup"
    backup.mkdir()
    _ready()
    with tracking.resumable_run(backup, Path(root), "imgclf", name=name) as (run, _):
        mlflow.log_param("process", name)
    print(json.dumps({"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}), flush=True)


def _reports(private: Path, name: str, round_: int) -> dict[str, str]:
    """This process's reports for a round (a PNG the size of a real plot, so copying it takes a while)."""
    import hashlib

    contents = {
        "trials.csv": f"process,round\n{name},{round_}\n".encode(),
        "best_params.json": json.dumps({"process": name, "round": round_}).encode(),
        "optimization_history.png": f"{name} {round_} ".encode() * 4000,
    }
    for file, content in contents.items():
        (private / file).write_bytes(content)
    return {file: hashlib.sha256(content).hexdigest() for file, content in contents.items()}


def child_search(name: str, root: str) -> None:
    """What two searches do at once: open the study on a fresh optuna.db, then publish reports/tune/."""
    import mlflow

    from imgclf.io import atomic_path
    from imgclf.paths import layout
    from imgclf.train import tune

    root = Path(root)
    folder, private = root / "reports" / "tune", Path.cwd() / f"private-{name}"
    private.mkdir()
    settings = {"study_name": "shared", "metric": "val_accuracy", "seed": 7,
                "pruner": {"startup_trials": 2, "warmup_epochs": 1}}  # fmt: skip
    for clone in range(STUDY_ROUNDS):
        clone_root = root / f"clone-{clone}"
        clone_root.mkdir(parents=True, exist_ok=True)
        url = tune.storage_url(layout(clone_root), None)  # optuna.db beside mlflow.db, not there yet
        _ready()
        with tune.study_lock(url, "shared"):
            study = tune.open_study(url, settings)
            joined = study.user_attrs[tune.JOINED_ATTR]  # this process's number in the study
        print(f"joined {joined}", flush=True)
    # A run in a file store of its own: creating a fresh sqlite store (its schema, the other test's
    # subject) takes 4-12 s; the artifacts are copied by the same local artifact repository either way.
    mlflow.set_tracking_uri((Path.cwd() / f"mlruns-{name}").as_uri())
    with mlflow.start_run(run_name=name) as run:
        reports = _reports(private, name, 0)
        step = _ready()
        if step == "hold":
            with atomic_path(folder / "optimization_history.png") as tmp:
                tmp.write_bytes(b"half a plot")
                _say("holding")
                tmp.write_bytes(b"a whole plot, from outside publish_reports")
        tune.publish_reports(private, folder)
        _say("published")
        for round_ in range(1, LOOPS + 1):
            reports = _reports(private, name, round_)
            tune.publish_reports(private, folder)
        artifacts = mlflow.get_artifact_uri("tune")
    print(json.dumps({"run_id": run.info.run_id, "artifacts": artifacts, "reports": reports}), flush=True)


if __name__ == "__main__":
    role, *arguments = sys.argv[1:]
    {"train": child_train, "search": child_search}[role](*arguments)
