"""Benchmark: the HTTP service under load, beside `mlflow models serve` on the registered Keras model.

    python benchmarks/serve.py [--requests 300] [--concurrency 1 8 32] [--time-limit 60]
    python benchmarks/serve.py --log-overhead     # the prediction log's cost: the service with and without it

Needs the pipeline's outputs (`dvc repro`): models/tflite/model_int8.tflite for our service, and the
registered model's champion in mlflow.db for MLflow's. Both servers run on loopback; a bounded
httpx client sends a fixed number of requests at each concurrency (stopping early at the time
limit) with one image each: a 28x28 PNG (a Fashion-MNIST test image) and a 224x224 JPEG (a real
photograph), as files. MLflow's server takes tensors, not files, so its client sends the image
already decoded and resized to the model's input as JSON (the work our service does server-side is
done, untimed, by the client). Prints p50 / p99 latency, requests per second and the server's CPU
use (cores busy, from /proc) for each; writes reports/bench/serve.json.

``--log-overhead`` starts our service twice, without the prediction log (``IMGCLF_LOG=off``) and
with it, every upload kept (``IMGCLF_CAPTURE=all``), and sends both the same stream of distinct
Fashion-MNIST test images (each a new row and a new captured file), alternating the two servers
for ``--rounds`` rounds at each concurrency; prints the median requests/s of each and their
ratio; writes reports/bench/serve_log.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imgclf.data.images import decode, prepare
from imgclf.io import write_json
from imgclf.paths import layout
from imgclf.team.server import free_port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and all its live descendants (Linux /proc):
    `mlflow models serve` runs its server in a child process."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    tree, total = [pid], 0.0
    while tree:
        current = tree.pop()
        total += stats.get(current, (0, 0.0))[1]
        tree += [child for child, (parent, _) in stats.items() if parent == current]
    return total


def start(cmd: list[str], port: int, health: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    process = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{health}", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"{cmd} not healthy within 300 s: {log.read_text()[-2000:]}")


async def load(send, requests: int, concurrency: int, time_limit: float) -> dict:
    """``requests`` calls of ``send(client)`` with at most ``concurrency`` in flight."""
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + time_limit
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal failures
        while not queue.empty() and time.monotonic() < deadline:
            queue.get_nowait()
            started = time.perf_counter()
            response = await send(client)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failures += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await send(client)  # warm-up
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "failures": failures,
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 2),
        "requests_per_s": round(len(latencies) / wall, 1),
        "wall_s": round(wall, 2),
    }


def images() -> dict[str, bytes]:
    """A 28x28 PNG (a Fashion-MNIST test image) and a 224x224 JPEG (a real photograph)."""
    from skimage import data

    from imgclf.data.shards import read_split

    x, _ = read_split(layout(ROOT), "test")
    small = cv2.imencode(".png", np.asarray(x[0]))[1].tobytes()
    photo = cv2.cvtColor(cv2.resize(data.chelsea(), (224, 224), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
    return {
        "28x28 png": small,
        "224x224 jpeg": cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--time-limit", type=float, default=60.0, help="per measurement, seconds")
    parser.add_argument("--model-uri", default="models:/imgclf-classifier@champion", help="for mlflow models serve")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--log-overhead", action="store_true", help="with and without the prediction log")
    parser.add_argument("--rounds", type=int, default=3, help="--log-overhead: alternating rounds")
    args = parser.parse_args()
    if args.log_overhead:
        return log_overhead(args)

    paths = layout(ROOT)
    card = json.loads(paths.tflite_meta.read_text())
    size, mode = card["input"]["image_size"], card["input"]["color_mode"]
    files = images()
    logs = Path(tempfile.mkdtemp(prefix="imgclf-bench-serve-"))
    servers = {}
    port = free_port()
    servers["imgclf.serve (int8 .tflite)"] = (
        start([sys.executable, "-m", "imgclf.serve", "--port", str(port)], port, "/health", logs / "imgclf.log"),
        port,
    )
    if not args.skip_mlflow:
        mlflow_port = free_port()
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{ROOT / 'mlflow.db'}"}
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", args.model_uri, "--env-manager", "local"]
        cmd += ["--host", "127.0.0.1", "-p", str(mlflow_port), "-w", "1"]
        servers["mlflow models serve (Keras)"] = (
            start(cmd, mlflow_port, "/ping", logs / "mlflow.log", env),
            mlflow_port,
        )

    results = []
    try:
        for server, (process, port) in servers.items():
            for image_name, data in files.items():
                if server.startswith("mlflow"):
                    tensor = prepare(decode(data), size, mode)[None].tolist()
                    body = json.dumps({"inputs": tensor}).encode()

                    def send(client, body=body, port=port):
                        headers = {"content-type": "application/json"}
                        return client.post(f"http://127.0.0.1:{port}/invocations", content=body, headers=headers)
                else:

                    def send(client, data=data, port=port):
                        return client.post(f"http://127.0.0.1:{port}/v1/predict", files=[("file", ("x", data))])

                for concurrency in args.concurrency:
                    cpu_before, wall_before = cpu_seconds(process.pid), time.perf_counter()
                    figures = asyncio.run(load(send, args.requests, concurrency, args.time_limit))
                    busy = (cpu_seconds(process.pid) - cpu_before) / (time.perf_counter() - wall_before)
                    row = {"server": server, "image": image_name, "concurrency": concurrency, **figures}
                    row["server_cpu_cores"] = round(busy, 2)
                    results.append(row)
                    print(
                        f"{server:30s} {image_name:13s} c={concurrency:<3d} p50 {row['p50_ms']:8.2f} ms  "
                        f"p99 {row['p99_ms']:8.2f} ms  {row['requests_per_s']:7.1f} req/s  "
                        f"CPU {row['server_cpu_cores']:.2f} cores  ({row['requests']} ok, {row['failures']} failed)",
                        flush=True,
                    )
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    write_json(ROOT / "reports" / "bench" / "serve.json", {"cores": os.cpu_count(), "results": results})


def log_overhead(args) -> None:
    """The same distinct images to the service without and with its prediction log, alternating."""
    from imgclf.data.shards import read_split

    x, _ = read_split(layout(ROOT), "test")
    pool = [cv2.imencode(".png", np.asarray(x[i]))[1].tobytes() for i in range(min(len(x), 5000))]
    logs = Path(tempfile.mkdtemp(prefix="imgclf-bench-log-"))
    configs = {"no log": {"IMGCLF_LOG": "off"},
               "log, capture all": {"IMGCLF_LOG": str(logs / "log" / "predictions.db"), "IMGCLF_CAPTURE": "all"}}  # fmt: skip
    servers = {}
    for name, env in configs.items():
        port = free_port()
        cmd = [sys.executable, "-m", "imgclf.serve", "--port", str(port)]
        servers[name] = (start(cmd, port, "/health", logs / f"{name}.log", env), port)
    counter = iter(range(10**9))
    results = []
    try:
        for concurrency in args.concurrency:
            rates: dict[str, list[float]] = {name: [] for name in servers}
            for _ in range(args.rounds):
                for name, (_, port) in servers.items():

                    def send(client, port=port):
                        image = pool[next(counter) % len(pool)]
                        return client.post(f"http://127.0.0.1:{port}/v1/predict", files=[("file", ("x.png", image))])

                    figures = asyncio.run(load(send, args.requests, concurrency, args.time_limit))
                    rates[name].append(figures["requests_per_s"])
            row = {"concurrency": concurrency, **{name: statistics.median(r) for name, r in rates.items()}}
            row["ratio"] = round(row["log, capture all"] / row["no log"], 3)
            results.append({**row, "rounds": rates})
            print(f"c={concurrency:<3d} no log {row['no log']:7.1f} req/s   log + capture all "
                  f"{row['log, capture all']:7.1f} req/s   ratio {row['ratio']:.3f}   rounds {rates}", flush=True)  # fmt: skip
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    write_json(ROOT / "reports" / "bench" / "serve_log.json", {"cores": os.cpu_count(), "results": results})


if __name__ == "__main__":
    main()
