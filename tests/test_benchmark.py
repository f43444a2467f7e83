"""The benchmark's quick mode end to end: the table's shape, never a timing."""

import json
import sys

import pytest
import yaml

from imgclf.paths import REPO_ROOT
from tests.conftest import run

pytestmark = pytest.mark.slow


def test_quick_benchmark_writes_the_table(tmp_path, fashion_mnist_dir):
    result = run([sys.executable, "benchmarks/run.py", "--quick", "--out", str(tmp_path)], REPO_ROOT)
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["quick"] is True
    assert set(bench["peer"]) >= {"train_seconds", "test_accuracy", "epochs"}
    ours = bench["ours"]
    assert set(ours["stages_s"]) == set(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])
    assert "predict" in ours["stages_s"]
    assert 0 <= ours["test_accuracy"] <= 1 and 0 <= ours["int8_accuracy"] <= 1
    assert ours["epochs"] == 1 and ours["noop_repro_s"] > 0
    assert set(bench["ratios"]) == {
        "train_time_ours_over_peer",
        "time_to_peer_accuracy_over_peer_train_time",
        "test_accuracy_ours_minus_peer",
    }
    table = (tmp_path / "bench.md").read_text()
    assert table == result.stdout
    assert "| test accuracy |" in table and "| stage export-tflite, s |" in table
