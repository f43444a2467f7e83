"""Benchmark: can parallel experiments share the local MLflow store (one sqlite file)?

    python benchmarks/tracking_store.py [--writers 4] [--calls 300]

Starts ``--writers`` processes at once against a fresh ``sqlite:///.../mlflow.db``, each opening a
run and logging ``--calls`` batches of per-epoch-style metrics, far more and faster than a training
logs. Prints errors and seconds per writer. Measured (2 cores, 2026-11-27, while a training ran):
4 writers x 300 calls, 0 errors, 9-12 s each; so queue workers (`dvc queue start -j N`) share the
default store, no tracking server needed on one machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def writer(uri: str, calls: int) -> None:
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("store-benchmark")
    errors, start = 0, time.perf_counter()
    with mlflow.start_run():
        for step in range(calls):
            try:
                mlflow.log_metrics({"loss": 1 / (step + 1), "accuracy": step / calls}, step=step)
            except Exception:  # counted, not raised: the figure is how many fail
                errors += 1
    print(json.dumps({"errors": errors, "seconds": time.perf_counter() - start}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.uri:
        writer(args.uri, args.calls)
        return
    with tempfile.TemporaryDirectory(prefix="imgclf-store-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        subprocess.run([sys.executable, __file__, "--uri", uri, "--calls", "1"], check=True, capture_output=True)
        cmd = [sys.executable, __file__, "--uri", uri, "--calls", str(args.calls)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(args.writers)]
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    errors = sum(r["errors"] for r in results)
    seconds = statistics.median(r["seconds"] for r in results)
    print(
        f"{args.writers} writers x {args.calls} log_metrics calls on one sqlite store: {errors} errors, median {seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
