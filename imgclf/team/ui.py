"""The MLflow UI on this repository's runs, opened on the training runs with the test metrics shown.

Run it as ``python -m imgclf.ui`` (``make ui``). It starts ``mlflow server`` on the project's store
(``mlflow.db`` and ``mlruns/``, or ``MLFLOW_TRACKING_URI``'s database), waits until it answers and
prints the one link to open; Ctrl-C stops it. With ``MLFLOW_TRACKING_URI`` set to a server, it only
prints that server's link.

Why not plain ``mlflow ui``: with MLflow 3.17, a browser that has not been told otherwise

- opens an experiment on its GenAI overview (traces, tokens): the UI's mode is a browser-wide
  setting (localStorage ``mlflow.workflowType_v1``, "genai" by default) that decides over the
  experiment's ``mlflow.experimentKind`` tag (mlflow#24498); the URL's ``workflowType=`` overrides it;
- shows the runs table without a metric column: the columns are kept in the browser's localStorage
  only, and the URL's ``orderByKey=`` sorts by a metric without showing it.

What MLflow does offer on the server side is the runs page's saved views ("Views" menu): an experiment
tag ``mlflow.sharedViewState.<id>`` holding columns, order and sort, opened by the URL's
``viewStateShareKey=<id>`` in any browser. This module saves one ("Headline metrics", rewritten at each
start) and prints its link. MLflow shows it with a "shared view" banner: "Override saved view" makes it
that browser's own view of the experiment.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgclf.io import PipelineError
from imgclf.team.server import free_port, stop_process_group, wait_for_mlflow

HEADLINE_METRICS = ("test_accuracy", "test_macro_f1", "test_log_loss", "test_ece", "val_accuracy", "baseline_accuracy")
SHIPPED_METRICS = ("accuracy", "size_bytes")  # of the variant the service ships: tflite_<serve.variant>_<name>
VIEW_ID = "imgclf-headline-metrics"
VIEW_NAME = "Headline metrics"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"  # MLflow's prefix for saved views
START_TIMEOUT_S = 120  # importing MLflow and starting its workers: 15-30 s on 2 busy cores


def view_state(variant: str = "int8") -> dict:
    """The runs table as the view shows it: the headline metrics first (with the shipped ``variant``'s
    accuracy and size), best test accuracy on top. Keys as MLflow's UI stores them (its search facets
    and runs-table UI state)."""
    names = [*HEADLINE_METRICS, *(f"tflite_{variant}_{name}" for name in SHIPPED_METRICS)]
    metrics = [f"metrics.`{name}`" for name in names]
    columns = [*metrics, "attributes.`Models`"]
    return {
        "orderByKey": "metrics.`test_accuracy`",
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": ["attributes.`Run Name`", "runDateAndNestInfo", "duration", *columns],
        "columnWidths": {f"metrics.`{name}`": max(100, 7 * len(name) + 30) for name in names},  # whole names
    }


def save_view(client, experiment_id: str, variant: str = "int8") -> None:
    """Create or update the saved view on the experiment (MLflow's envelope: name, times, state)."""
    state = json.dumps(view_state(variant), sort_keys=True)
    try:
        old = json.loads(client.get_experiment(experiment_id).tags.get(VIEW_TAG) or "{}")
    except ValueError:
        old = {}
    if old.get("name") == VIEW_NAME and old.get("state") == state:
        return
    now = int(time.time() * 1000)
    created = old.get("createdAt") if isinstance(old.get("createdAt"), int) else now
    envelope = {"name": VIEW_NAME, "createdAt": created, "updatedAt": now, "state": state}
    client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(envelope))


def runs_link(base_url: str, experiment_id: str) -> str:
    """The experiment's runs table in the saved view, in the UI's model-training mode."""
    query = f"viewStateShareKey={VIEW_ID}&workflowType=machine_learning"
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def check_port(host: str, port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            sock.bind((host, port))
        except OSError as error:
            raise PipelineError(f"port {port} on {host} is in use ({error.strerror}): pass --port N") from None


def start_server(uri: str, host: str, port: int, log: Path) -> subprocess.Popen:
    """``mlflow server`` on ``uri``, in its own session: its workers stop with it."""
    from imgclf.team.tracking import sqlite_file

    database = sqlite_file(uri)
    artifacts = ["--default-artifact-root", (database.resolve().parent / "mlruns").as_uri()] if database else []
    mlflow = Path(sys.executable).parent / "mlflow"
    with log.open("wb") as sink:
        return subprocess.Popen(
            [str(mlflow if mlflow.exists() else "mlflow"), "server", "--backend-store-uri", uri, *artifacts,
             "--host", host, "--port", str(port), "--workers", "2"],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgclf.ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000; 0: a free one)")
    parser.add_argument("--experiment", help="MLflow experiment (default: params.yaml's train.experiment_name)")
    args = parser.parse_args(argv)

    def stop_on(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even where started with SIGINT ignored
    process, log, stopped = None, None, False
    try:
        remote = os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://"))
        if not remote:
            if args.port == 0:
                args.port = free_port()
            check_port(args.host, args.port)  # before the slow imports: a busy port fails at once
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        from imgclf.params import load_section
        from imgclf.paths import layout
        from imgclf.team import tracking

        root = layout().root
        name = args.experiment or load_section("train", root / "params.yaml")["experiment_name"]
        uri = tracking.tracking_uri(root)
        try:
            experiment_id = tracking.configure(root, name)  # creates the store and experiment if new
            save_view(MlflowClient(uri), experiment_id, load_section("serve", root / "params.yaml")["variant"])
        except MlflowException as error:  # the store itself (an out-of-date schema, say): one line
            raise PipelineError(f"{uri}: {error.message.splitlines()[0]}") from None
        if remote:
            print(f"MLflow server {uri}; open:\n{runs_link(uri, experiment_id)}", flush=True)
            return 0
        log = Path(tempfile.gettempdir()) / f"imgclf-ui-{args.port}.log"
        url = f"http://{connect_host(args.host)}:{args.port}"
        process = start_server(uri, args.host, args.port, log)
        wait_for_mlflow(process, url, log, START_TIMEOUT_S, mention_log=True)
        print(f"MLflow UI on {uri} (log: {log}); Ctrl-C stops it. Open:", flush=True)
        print(runs_link(url, experiment_id), flush=True)
        process.wait()
        raise PipelineError(f"mlflow server exited (status {process.returncode}; log: {log})")
    except PipelineError as error:
        print(f"ui: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping", flush=True)
        stopped = True
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C waits for the stop
            signal.signal(signum, signal.SIG_IGN)
        stop_process_group(process)
        if stopped and log is not None:  # kept when the server failed
            log.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
