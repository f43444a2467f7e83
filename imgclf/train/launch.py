"""Start one command as several TensorFlow workers on this machine: ``python -m imgclf.launch``.

    python -m imgclf.launch --workers 2                    # python -m stages.train, twice
    python -m imgclf.launch --workers 2 -- python my.py    # any command

Each worker gets a ``TF_CONFIG`` naming all of them on free loopback ports (worker 0 is the chief:
it alone writes the model, the history and the MLflow run), so the train stage trains under
``MultiWorkerMirroredStrategy``. Their output is forwarded line by line, prefixed ``[worker N]``.
When one worker fails, the others would wait for it in their next collective operation for ever:
the launcher then stops them (SIGTERM to each worker's process group, SIGKILL after ``--grace``
seconds) and exits with the failed worker's status and one line saying which. Ctrl-C (or SIGTERM to
the launcher) stops them all the same way. Exit status 0 only when every worker exited 0.
A training stopped either way resumes from its last finished epoch when started again, as after any kill.

On a real cluster there is no launcher: each host or pod gets its own ``TF_CONFIG`` (docs/team.md,
"Training on several machines").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

from imgclf.team.server import free_port

DEFAULT_COMMAND = [sys.executable, "-m", "stages.train"]


def tf_configs(workers: int, host: str = "127.0.0.1") -> list[str]:
    """One ``TF_CONFIG`` per worker, all naming the same cluster of distinct free ports."""
    ports: list[int] = []
    while len(ports) < workers:
        if (port := free_port()) not in ports:
            ports.append(port)
    cluster = {"worker": [f"{host}:{port}" for port in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(workers)]


def _forward(index: int, stream, lock: threading.Lock) -> None:
    for line in iter(stream.readline, b""):
        text = line.decode(errors="replace").rstrip("\n")
        with lock:
            print(f"[worker {index}] {text}", flush=True)
    stream.close()


def _stop(processes: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM to every worker still running (its whole process group), SIGKILL after ``grace`` seconds."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the worker and what it started (dvc repro's stage, say)
    except ProcessLookupError:
        pass


class _Stop(Exception):
    pass


def launch(command: list[str], workers: int, grace: float = 10.0, poll: float = 0.2) -> int:
    """Run ``command`` as ``workers`` workers; return 0 when all exit 0, else the first failure's status."""
    lock = threading.Lock()
    processes: list[subprocess.Popen] = []
    threads: list[threading.Thread] = []

    def on_term(signum, frame):
        raise _Stop

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        for index, config in enumerate(tf_configs(workers)):
            env = {**os.environ, "TF_CONFIG": config}
            process = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
            )
            processes.append(process)
            thread = threading.Thread(target=_forward, args=(index, process.stdout, lock), daemon=True)
            thread.start()
            threads.append(thread)
        while True:
            codes = [p.poll() for p in processes]
            failed = [(i, code) for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                index, code = failed[0]
                _stop(processes, grace)
                _join(threads)
                print(f"launch: worker {index} exited with status {code}; stopped the others", file=sys.stderr)
                return code if code > 0 else 1
            if all(code == 0 for code in codes):
                _join(threads)
                return 0
            time.sleep(poll)
    except (KeyboardInterrupt, _Stop):
        _stop(processes, grace)
        _join(threads)
        print(f"launch: interrupted; stopped {len(processes)} worker(s)", file=sys.stderr)
        return 130
    except OSError as error:  # the command could not be started
        _stop(processes, grace)
        _join(threads)
        print(f"launch: error: {error}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgclf.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="how many workers (default 2)")
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds a stopped worker gets before SIGKILL (default 10)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command (python -m stages.train)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return launch(command or DEFAULT_COMMAND, args.workers, args.grace)


if __name__ == "__main__":
    sys.exit(main())
