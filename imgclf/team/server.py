"""A shared tracking server for a team: PostgreSQL with an ``mlflow server`` on it, one command.

Run it as ``python -m imgclf.server`` (``make tracking-server``). It starts

- a local PostgreSQL (Debian's ``postgresql`` package; its cluster is created on the first start
  under ``--dir``, ``.cache/tracking/`` by default), listening on 127.0.0.1 only, with a password
  generated on the first start and kept in ``<dir>/password`` (mode 600); as root, PostgreSQL runs
  as the ``postgres`` user (its server refuses to run as root). It holds two databases: ``mlflow``
  (runs, metrics, the model registry) and ``optuna`` (shared hyperparameter searches);
- ``mlflow server`` on that database with proxied artifacts (``--artifacts-destination``,
  ``<dir>/artifacts`` here; an ``s3://`` or ``gs://`` URL for a real team), on 127.0.0.1,

prints the two URLs to use (``MLFLOW_TRACKING_URI=...`` and the Optuna storage) and runs until
Ctrl-C or SIGTERM, then stops both. The engines are PostgreSQL's and MLflow's own; this module only
starts, waits for and stops them.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.io import PipelineError

DB_USER = "imgclf"
DATABASES = ("mlflow", "optuna")
START_TIMEOUT_S = 60


def wait_for_mlflow(
    process: subprocess.Popen, url: str, log: Path, timeout_s: float, mention_log: bool = False
) -> None:
    """Until ``url``'s ``/health`` answers 200; a one-line error with the last line of ``log`` when the
    server exits first, or when ``timeout_s`` passes (``mention_log``: the messages name the log file)."""
    where = f"; log: {log}" if mention_log else ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
            raise PipelineError(f"mlflow server exited at start ({tail[0] if tail else 'no output'}{where})")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.2)  # polling a condition with a deadline
    raise PipelineError(
        f"mlflow server did not answer on {url} within {timeout_s} s" + (f" (log: {log})" if mention_log else "")
    )


def stop_process_group(process: subprocess.Popen | None) -> None:
    """Stop a server started in its own session (``start_new_session``) and everything it started:
    SIGTERM to the group, 20 s to exit, then SIGKILL to whatever of it is left (gunicorn's workers
    outlive a leader that exited first)."""
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    # the group keeps the leader's pid as its id while any member lives; an empty group's id could in
    # principle be reused by a new session leader, a risk taken to not leave workers behind
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def free_port() -> int:
    """A port nobody listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path:
    """The folder with initdb and pg_ctl (Debian keeps them out of PATH), newest version first."""
    if found := shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    if not candidates:
        raise PipelineError(
            "PostgreSQL is not installed: apt-get install postgresql (as root; `make test-tools` does it)"
        )
    return Path(candidates[-1]).parent


def _as_db_owner() -> list[str]:
    """The command prefix that runs PostgreSQL's programs: as ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PipelineError("running as root needs the `postgres` user (apt-get install postgresql)") from None
    return ["runuser", "-u", "postgres", "--"]


def _run(cmd: list[str], what: str, env: dict | None = None) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=START_TIMEOUT_S)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise PipelineError(f"{what} failed: {detail[-1] if detail else f'exit status {result.returncode}'}")
    return result.stdout


@dataclass
class TrackingServer:
    """PostgreSQL + ``mlflow server``, started with :meth:`start` and stopped with :meth:`stop`."""

    folder: Path
    port: int = 5000
    db_port: int = 5433
    workers: int = 2
    artifacts: str | None = None
    _mlflow: subprocess.Popen | None = field(default=None, repr=False)
    _db_started: bool = field(default=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.folder / "postgres"

    @property
    def password(self) -> str:
        return (self.folder / "password").read_text().strip()

    def db_url(self, database: str, hide_password: bool = False) -> str:
        password = "***" if hide_password else self.password
        return f"postgresql+psycopg2://{DB_USER}:{password}@127.0.0.1:{self.db_port}/{database}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- PostgreSQL --------------------------------------------------------------------------------

    def _init_cluster(self, bindir: Path, owner: list[str]) -> None:
        """A new cluster: loopback only (the server gets -c listen_addresses), password auth on TCP."""
        password_file = self.folder / "password"
        if not password_file.exists():
            password_file.touch(mode=0o600)
            password_file.write_text(secrets.token_urlsafe(24) + "\n")
        self.data_dir.mkdir(mode=0o700)
        pwfile = self.folder / "initdb.pw"  # readable by the cluster's owner during initdb only (an empty -D)
        pwfile.touch(mode=0o600)
        pwfile.write_text(self.password + "\n")
        if owner:
            shutil.chown(self.data_dir, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        try:
            _run(
                [*owner, str(bindir / "initdb"), "-D", str(self.data_dir), "-U", DB_USER, f"--pwfile={pwfile}",
                 "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-instructions"],
                "initdb",
            )  # fmt: skip
        except PipelineError:
            shutil.rmtree(self.data_dir, ignore_errors=True)  # no half-made cluster for the next start
            raise
        finally:
            pwfile.unlink(missing_ok=True)

    def start_database(self) -> None:
        bindir, owner = postgres_bin(), _as_db_owner()
        self.folder.mkdir(parents=True, exist_ok=True)
        if owner:  # postgres must reach its data directory through every parent folder
            os.chmod(self.folder, 0o711)
            check = subprocess.run([*owner, "test", "-x", str(self.folder)], capture_output=True)
            if check.returncode != 0:
                raise PipelineError(
                    f"the postgres user cannot reach {self.folder} (a parent folder is private): "
                    "pass --dir a folder under /srv or /var/tmp"
                )
        if not (self.data_dir / "PG_VERSION").exists():
            self._init_cluster(bindir, owner)
        log = self.folder / "postgres.log"
        log.touch()
        if owner:
            shutil.chown(log, "postgres", "postgres")
        options = f"-p {self.db_port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.data_dir}"
        _run(
            [*owner, str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(log), "-o", options,
             "-w", "-t", str(START_TIMEOUT_S), "start"],
            f"PostgreSQL on 127.0.0.1:{self.db_port} (log: {log})",
        )  # fmt: skip
        self._db_started = True
        self._create_databases()

    def _create_databases(self) -> None:
        import psycopg2

        connection = psycopg2.connect(
            host="127.0.0.1", port=self.db_port, user=DB_USER, password=self.password, dbname="postgres"
        )
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with connection.cursor() as cursor:
                for name in DATABASES:
                    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cursor.fetchone() is None:
                        cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()

    def stop_database(self) -> None:
        if self._db_started:
            self._db_started = False
            subprocess.run(
                [*_as_db_owner(), str(postgres_bin() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
                 "-w", "-t", "30", "stop"],
                capture_output=True, timeout=60,
            )  # fmt: skip

    # -- MLflow ------------------------------------------------------------------------------------

    def start_mlflow(self) -> None:
        artifacts = self.artifacts or str((self.folder / "artifacts").resolve())
        if "://" not in artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
        log = (self.folder / "mlflow.log").open("ab")
        mlflow = Path(sys.executable).parent / "mlflow"
        self._mlflow = subprocess.Popen(
            [str(mlflow if mlflow.exists() else "mlflow"), "server",
             "--artifacts-destination", artifacts,
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)],
            env={**os.environ, "MLFLOW_BACKEND_STORE_URI": self.db_url("mlflow")},  # the password stays out of `ps`
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # its workers stop with it
        )  # fmt: skip
        log.close()
        wait_for_mlflow(self._mlflow, self.tracking_uri, self.folder / "mlflow.log", START_TIMEOUT_S)

    def stop_mlflow(self) -> None:
        process, self._mlflow = self._mlflow, None
        stop_process_group(process)

    def start(self) -> TrackingServer:
        try:
            self.start_database()
            self.start_mlflow()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.stop_mlflow()
        self.stop_database()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgclf.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(".cache/tracking"), help="state: database, artifacts, logs")
    parser.add_argument("--port", type=int, default=5000, help="MLflow's port (0: a free one)")
    parser.add_argument("--db-port", type=int, default=5433, help="PostgreSQL's port (0: a free one)")
    parser.add_argument("--workers", type=int, default=2, help="mlflow server worker processes")
    parser.add_argument("--artifacts", help="artifact store (default <dir>/artifacts; s3://bucket/path, gs://...)")
    args = parser.parse_args(argv)
    server = TrackingServer(
        args.dir.resolve(), args.port or free_port(), args.db_port or free_port(), args.workers, args.artifacts
    )

    def stop_on(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on)
    try:
        server.start()
        print(f"MLflow:  export MLFLOW_TRACKING_URI={server.tracking_uri}", flush=True)
        print(f"Optuna:  python -m imgclf.tune --storage '{server.db_url('optuna')}'", flush=True)
        print(f"state in {server.folder}; Ctrl-C stops both servers", flush=True)
        while True:
            if server._mlflow is not None and server._mlflow.poll() is not None:
                raise PipelineError(f"mlflow server exited (log: {server.folder / 'mlflow.log'})")
            time.sleep(1)
    except PipelineError as error:
        print(f"tracking-server: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping", flush=True)
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C (or `timeout`'s second TERM) waits
            signal.signal(signum, signal.SIG_IGN)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
