"""Benchmark: our pipeline from a clean state vs the keras.io "Simple MNIST convnet" peer, same machine.

    python benchmarks/run.py            # full Fashion-MNIST (about 15 minutes on 2 CPU cores)
    python benchmarks/run.py --quick    # a smoke run on 50 images per class

Prints one table and writes it to reports/bench/bench.json and bench.md (not a DVC output).
"Time to the peer's accuracy" uses our per-epoch validation accuracy as the proxy for test
accuracy (the pipeline does not look at the test split while training).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # for tests.pipeline_copy

import pandas as pd
import yaml

from imgclf.io import write_json, write_text
from imgclf.paths import layout
from tests.pipeline_copy import new_repository

STAGE_DONE = re.compile(r"stage\.(?P<stage>[\w-]+) INFO [\w-]+ done in (?P<seconds>[\d.]+) s")


def sh(cmd: list[str], cwd: Path, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result, elapsed


def run_peer(quick: bool, env: dict) -> dict:
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "peer_simple_convnet.py")]
    if quick:
        cmd += ["--epochs", "1", "--limit", "50"]
    result, _ = sh(cmd, REPO_ROOT, env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_ours(quick: bool, env: dict, workdir: Path) -> dict:
    root = new_repository(workdir / "repo")
    if quick:
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["ingest"]["limit"] = 50
        params["validate"]["min_per_class"] = 20
        params["train"]["epochs"] = 1
        params["export"]["max_accuracy_drop"] = 1.0  # a one-epoch model on 500 images: int8 may drift
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**env, "PYTHONPATH": str(root), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    repro, total = sh(["dvc", "repro", "--force"], root, env)
    stages = {m["stage"]: float(m["seconds"]) for m in STAGE_DONE.finditer(repro.stdout + repro.stderr)}
    _, noop = sh(["dvc", "repro"], root, env)
    paths = layout(root)
    history = pd.read_csv(paths.history)
    metrics = json.loads(paths.eval_detail.read_text())["test"]
    export = json.loads(paths.export_report.read_text())
    return {
        "stages_s": stages,
        "total_s": total,
        "noop_s": noop,
        "history": history,
        "metrics": metrics,
        "export": export,
    }


def time_to_accuracy(history: pd.DataFrame, target: float) -> float | None:
    elapsed = history["epoch_time_s"].cumsum()
    reached = history.index[history["val_accuracy"] >= target]
    return float(elapsed[reached[0]]) if len(reached) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run on a small subset, 1 epoch")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "bench")
    args = parser.parse_args()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    peer = run_peer(args.quick, env)
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
        ours = run_ours(args.quick, env, Path(tmp))
    train_s = ours["stages_s"].get("train")
    to_peer = time_to_accuracy(ours["history"], peer["test_accuracy"])
    int8 = ours["export"]["variants"].get("int8", {})
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
        "quick": args.quick,
        "peer": peer,
        "ours": {
            "stages_s": ours["stages_s"],
            "total_s": round(ours["total_s"], 1),
            "noop_repro_s": round(ours["noop_s"], 2),
            "train_s": train_s,
            "epochs": len(ours["history"]),
            "test_accuracy": ours["metrics"]["accuracy"],
            "time_to_peer_accuracy_s": to_peer,
            "int8_accuracy": int8.get("accuracy"),
            "int8_latency_ms_p50": int8.get("latency_ms_p50"),
            "int8_size_ratio": round(int8["size_bytes"] / ours["export"]["variants"]["float32"]["size_bytes"], 3)
            if int8 and "float32" in ours["export"]["variants"]
            else None,
        },
    }
    result["ratios"] = {
        "train_time_ours_over_peer": round(train_s / peer["train_seconds"], 3) if train_s else None,
        "time_to_peer_accuracy_over_peer_train_time": round(to_peer / peer["train_seconds"], 3) if to_peer else None,
        "test_accuracy_ours_minus_peer": round(ours["metrics"]["accuracy"] - peer["test_accuracy"], 4),
    }
    markdown = to_markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "bench.json", result)
    write_text(args.out / "bench.md", markdown)
    print(markdown, end="")


def to_markdown(r: dict) -> str:
    ours, peer, ratios = r["ours"], r["peer"], r["ratios"]

    def fmt(value, spec=".1f"):
        return "n/a" if value is None else format(value, spec)

    rows = [
        (
            "test accuracy",
            fmt(peer["test_accuracy"], ".4f"),
            fmt(ours["test_accuracy"], ".4f"),
            fmt(ratios["test_accuracy_ours_minus_peer"], "+.4f") + " (diff)",
        ),
        (
            "training time, s (ours: the whole train stage)",
            fmt(peer["train_seconds"]),
            fmt(ours["train_s"]),
            fmt(ratios["train_time_ours_over_peer"], ".2f"),
        ),
        (
            "time to the peer's final accuracy, s (ours: val. accuracy)",
            fmt(peer["train_seconds"]),
            fmt(ours["time_to_peer_accuracy_s"]),
            fmt(ratios["time_to_peer_accuracy_over_peer_train_time"], ".2f"),
        ),
        ("epochs", str(peer["epochs"]), str(ours["epochs"]), ""),
        ("whole `dvc repro --force`, s", "", fmt(ours["total_s"]), ""),
        *[(f"stage {name}, s", "", fmt(seconds), "") for name, seconds in ours["stages_s"].items()],
        ("no-op `dvc repro`, s", "", fmt(ours["noop_repro_s"], ".2f"), ""),
        ("int8 .tflite test accuracy", "", fmt(ours["int8_accuracy"], ".4f"), ""),
        ("int8 .tflite batch-1 latency, ms (median)", "", fmt(ours["int8_latency_ms_p50"], ".3f"), ""),
        ("int8 / float32 file size", "", fmt(ours["int8_size_ratio"], ".3f"), ""),
    ]
    lines = [
        f"Benchmark {r['date']}{' (quick smoke run)' if r['quick'] else ''}: {r['machine']}",
        "",
        "| | peer (keras.io Simple MNIST convnet) | ours | ours/peer |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
