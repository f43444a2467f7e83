"""Queued DVC experiments, run two at a time in DVC's temporary copies, as a team runs them: each runs
its own code, one that does not retrain reuses the baseline's MLflow run, and every MLflow run lands
in the workspace's store with a readable name, its experiment's tags and its datasets."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from imgclf.io import read_json
from imgclf.paths import layout
from tests.conftest import TINY_PIPELINE, run, set_params

pytestmark = pytest.mark.slow
MARKER = "Queued with a code change that the workspace no longer has."


def _start_queue(root, workers: int) -> None:
    """``dvc queue start`` with its output to a file, not a pipe: DVC's worker launcher keeps the stdout
    it inherited until its worker exits, so a captured call returns only when the queue is done, and
    never when a celery worker hangs in its shutdown (it did in CI, after "shutting down due to empty
    queue"). The experiments' outcome is read from ``dvc queue status``."""
    with (root / "queue-start.log").open("w") as log:
        started = subprocess.run(
            ["dvc", "queue", "start", "-j", str(workers)], cwd=root, env=_env(root), stdout=log, stderr=log
        )
    assert started.returncode == 0, (root / "queue-start.log").read_text()


def _stop_workers(root) -> None:
    """Kill what is left of the queue's workers (by the pid files DVC keeps): a worker stuck in its own
    shutdown must not outlive the test."""
    for info in (root / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.json"):
        with contextlib.suppress(ValueError, KeyError, TypeError, ProcessLookupError, PermissionError):
            os.kill(int(json.loads(info.read_text())["pid"]), signal.SIGKILL)


def _env(root):
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(root)}  # fmt: skip


def _wait_for_queue(root, timeout_s=900):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], root).stdout
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(5)
    raise AssertionError(f"queue still busy after {timeout_s} s:\n{status}")


def test_a_queue_of_experiments_runs_its_own_code_and_logs_to_the_workspace_store(repo_copy, fashion_mnist_dir):
    root = repo_copy
    set_params(root, **TINY_PIPELINE)
    run(["dvc", "repro"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "baseline"], root)
    baseline_run = read_json(layout(root).run_info)["run_id"]
    promotion = read_json(layout(root).promotion)
    assert promotion["promote"] and promotion["version"] == "1" and "no champion yet" in promotion["reason"]

    # 1. a code change queued, then reverted in the workspace before the queue runs
    metrics_py = root / "imgclf" / "evaluate" / "metrics.py"
    original = metrics_py.read_text()
    marker_code = original.replace('lines = ["# Evaluation", ""]', f'lines = ["# Evaluation", "{MARKER}", ""]')
    assert marker_code != original, "evaluation_summary's first lines changed: update this test"
    metrics_py.write_text(marker_code)
    run(["dvc", "exp", "run", "--queue", "-n", "code-change"], root)
    metrics_py.write_text(original)
    # 2. a change to evaluate's params only (no retraining), 3. one that retrains
    run(["dvc", "exp", "run", "--queue", "-n", "eval-only", "-S", "evaluate.top_k=2"], root)
    run(["dvc", "exp", "run", "--queue", "-n", "retrain", "-S", "train.learning_rate=0.001"], root)
    _start_queue(root, workers=2)
    try:
        status = _wait_for_queue(root)
    finally:
        _stop_workers(root)
    assert status.count("Success") == 3, status
    # the runs compare on a headline: a score of numeric metric columns, not hundreds
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
    cells = [
        (f"{name}:{key}", value)
        for row in [*shown, *(r for e in shown for x in e.get("experiments") or [] for r in x["revs"])]
        for name, metrics in ((row.get("data") or {}).get("metrics") or {}).items()
        for key, value in (metrics.get("data") or {}).items()
    ]
    assert 10 <= len({column for column, _ in cells}) <= 20, sorted({column for column, _ in cells})
    assert all(type(value) in (int, float) for _, value in cells), cells

    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], root).stdout.split()
    ref = {name: next(r for r in refs if r.endswith(f"/{name}")) for name in ("code-change", "eval-only", "retrain")}
    summary = run(["git", "show", f"{ref['code-change']}:reports/eval/summary.md"], root).stdout
    assert MARKER in summary  # the experiment's own copy of imgclf ran, not the workspace's
    assert MARKER not in (layout(root).eval_summary).read_text()

    # not retrained: the experiment's models/run.json (a DVC-cached out) is the baseline's, and evaluate
    # found that run in the store
    def run_json_hash(rev):
        lock = yaml.safe_load(run(["git", "show", f"{rev}:dvc.lock"], root).stdout)
        return next(o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "models/run.json")

    assert run_json_hash(ref["eval-only"]) == run_json_hash("HEAD")

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("imgclf")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert len(by_name) == len(runs) == 2, [r.info.run_name for r in runs]  # baseline + retrain, distinct names
    retrained = by_name["retrain"]
    assert retrained.data.tags["dvc_exp_name"] == "retrain" and retrained.data.tags["dvc_exp_baseline_rev"]
    assert "test_accuracy" in retrained.data.metrics  # evaluate, in the temporary copy, logged into it
    assert {i.dataset.name for i in retrained.inputs.dataset_inputs} == {"train", "val", "test"}
    baseline = client.get_run(baseline_run)
    assert re.fullmatch(r"simple_cnn lr=[\d.e-]+ batch=64", baseline.info.run_name)  # model, key params, no commit
    assert baseline.info.run_name == f"simple_cnn lr={float(baseline.data.params['plan.learning_rate']):g} batch=64"
    assert "test_top_2_accuracy" in baseline.data.metrics  # the eval-only experiment logged into the baseline run
    assert not list((root / ".dvc" / "tmp").rglob("mlflow.db"))  # no store left in a temporary copy

    # the retrained model is version 2: the candidate; champion only if it beat version 1 beyond noise
    assert str(client.get_model_version_by_alias("imgclf-classifier", "candidate").version) == "2"
    retrain_promotion = json.loads(run(["git", "show", f"{ref['retrain']}:reports/promotion.json"], root).stdout)
    assert retrain_promotion["version"] == "2" and retrain_promotion["champion_before"] == "1"
    champion = str(client.get_model_version_by_alias("imgclf-classifier", "champion").version)
    assert champion == ("2" if retrain_promotion["promote"] else "1")
