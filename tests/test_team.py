"""Working as a team (docs/team.md): a shared tracking server (PostgreSQL + mlflow server,
``python -m imgclf.server``), DVC remotes (a local folder and SSH on loopback) with the run cache, and
two search processes on one Optuna study in PostgreSQL.

One tiny Fashion-MNIST pipeline is built once for the module (the data stages while the server
starts), trained once as an experiment against the server, and pushed; the tests then read the
server, clone the repository as colleagues would, and run searches on it. Every server is started
here on free ports and stopped by a finalizer, also when a test fails."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from imgclf.io import PipelineError, read_json
from imgclf.team.server import free_port, postgres_bin
from tests.conftest import TINY_PIPELINE, set_params
from tests.pipeline_copy import new_repository

LEARNING_RATE = "0.002"  # the experiment: the committed params have train.learning_rate 0.0087


def sh(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True, timeout: float = 600):
    """Run a command with the venv's tools and ``cwd``'s own package, plus ``env``."""
    full_env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(cwd),
        **(env or {}),
    }
    result = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def wait_for(condition, timeout_s: float, what: str):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def stop_process_group(process: subprocess.Popen, timeout_s: float = 60) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


# -- the module's tiny pipeline, tracking server and remote ---------------------------------------


@pytest.fixture(scope="module")
def team(tmp_path_factory, fashion_mnist_dir):
    """A tiny pipeline repository (data stages run and committed, a local DVC remote configured) and
    the tracking server started by ``python -m imgclf.server`` (PostgreSQL + mlflow server)."""
    try:
        postgres_bin()
    except PipelineError as error:  # not root and no apt (`make test-tools` installs it): said, not failed
        pytest.skip(str(error))
    base = tmp_path_factory.mktemp("team")
    root = new_repository(base / "repo")
    remote = base / "remote"
    set_params(root, **TINY_PIPELINE, tune={"epochs": 1, "max_train_images": 100, "max_val_images": 50})
    # PostgreSQL runs as the postgres user, which cannot enter pytest's private temporary folders
    state = Path(tempfile.mkdtemp(prefix="imgclf-tracking-"))
    output = base / "server.log"
    with output.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "imgclf.server", "--dir", str(state),
             "--port", str(free_port()), "--db-port", str(free_port())],
            cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        sh(["dvc", "remote", "add", "-d", "shared", str(remote)], root)  # meanwhile: the data stages
        sh(["dvc", "repro", "augment"], root)
        sh(["git", "add", "-A"], root)
        sh(["git", "commit", "-qm", "data"], root)

        def ready():
            assert server.poll() is None, "tracking server exited:\n" + output.read_text()
            return re.search(r"MLFLOW_TRACKING_URI=(\S+)", output.read_text())

        uri = wait_for(ready, 120, "tracking server").group(1)
        optuna_url = re.search(r"--storage '([^']+)'", output.read_text()).group(1)
        yield SimpleNamespace(root=root, remote=remote, uri=uri, optuna_url=optuna_url, state=state, base=base)
    finally:
        stop_process_group(server)
        data_dir = state / "postgres"
        if (data_dir / "postmaster.pid").exists():  # the server command did not stop it: stop it here
            owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
            pg_ctl = next(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
            subprocess.run([*owner, str(pg_ctl), "-D", str(data_dir), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def trained(team):
    """An experiment (``train.learning_rate``) run with the whole pipeline against the tracking server,
    committed, and pushed to the remote with its run cache."""
    env = {"MLFLOW_TRACKING_URI": team.uri}
    started = time.monotonic()
    sh(["dvc", "exp", "run", "-n", "lr-low", "-S", f"train.learning_rate={LEARNING_RATE}"], team.root, env)
    team.train_s = time.monotonic() - started
    sh(["git", "add", "-A"], team.root)
    sh(["git", "commit", "-qm", "experiment lr-low"], team.root)
    sh(["python", "-m", "imgclf.remote", "push"], team.root)  # = dvc push --run-cache, and the run cache's outputs
    return team


def clone(team, name: str, rev: str | None = None) -> Path:
    target = team.base / name
    sh(["git", "clone", "-q", str(team.root), str(target)], team.base)
    if rev:
        sh(["git", "checkout", "-q", rev], target)
    return target


# -- 1. the shared tracking server -----------------------------------------------------------------


@pytest.mark.slow
def test_every_stage_logs_to_the_tracking_server_run_metrics_figures_model_and_registry(trained):
    import mlflow
    import requests
    from mlflow.tracking import MlflowClient

    root = trained.root
    client = MlflowClient(trained.uri)
    experiment = client.get_experiment_by_name("imgclf")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.dvc_exp_name = 'lr-low'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == read_json(root / "models" / "run.json")["run_id"]
    assert run.data.params["train.learning_rate"] == LEARNING_RATE
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 1  # per epoch, from train
    assert "test_accuracy" in run.data.metrics  # from evaluate
    assert run.data.tags["promotion"]  # from promote
    figures = [a.path for a in client.list_artifacts(run.info.run_id, "eval")]
    assert any(path.endswith(".png") for path in figures), figures
    # the model is a registered version, with both aliases, read back through the server
    version = client.get_model_version_by_alias("imgclf-classifier", "champion")
    assert version.version == "1" and version.run_id == run.info.run_id
    assert client.get_model_version_by_alias("imgclf-classifier", "candidate").version == "1"
    mlflow.set_tracking_uri(trained.uri)
    model = mlflow.pyfunc.load_model("models:/imgclf-classifier@champion")  # artifacts proxied by the server
    assert model.metadata.signature is not None
    # the REST API says the same; the artifacts are in the server's store, nothing in the repository
    reply = requests.get(f"{trained.uri}/api/2.0/mlflow/registered-models/get", params={"name": "imgclf-classifier"})
    aliases = {a["alias"]: a["version"] for a in reply.json()["registered_model"]["aliases"]}
    assert aliases == {"champion": "1", "candidate": "1"}
    assert any((trained.state / "artifacts").rglob("model.keras")) or any((trained.state / "artifacts").rglob("*.h5"))
    assert not (root / "mlflow.db").exists() and not (root / "mlruns").exists()


@pytest.mark.slow
def test_a_stage_fails_fast_in_one_line_when_the_tracking_server_is_down(team):
    root = team.root
    before = {folder: tree(root / folder) for folder in ("models", "reports")}
    started = time.monotonic()
    result = sh(
        ["python", "-m", "stages.train"], root, {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}, check=False
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("train: error: MLflow tracking server http://127.0.0.1:"), (
        result.stderr
    )
    assert "not reachable" in errors[0] and "Traceback" not in result.stderr
    assert elapsed < 60, f"{elapsed:.0f} s"  # importing TensorFlow is most of it; MLflow's retries took minutes
    assert {folder: tree(root / folder) for folder in ("models", "reports")} == before


# -- 2. a DVC remote and its run cache -------------------------------------------------------------


@pytest.mark.slow
def test_a_fresh_clone_pulls_from_the_remote_and_reproduces_nothing(trained):
    colleague = clone(trained, "fresh-clone")
    sh(["dvc", "pull"], colleague)
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], colleague).stdout
    repro = sh(["dvc", "repro"], colleague, {"MLFLOW_TRACKING_URI": trained.uri})
    assert "Running stage" not in repro.stdout and "Data and pipelines are up to date" in repro.stdout, repro.stdout
    assert (colleague / "models" / "model.keras").read_bytes() == (trained.root / "models" / "model.keras").read_bytes()


@pytest.mark.slow
def test_a_colleague_gets_an_experiment_already_run_from_the_run_cache_without_training(trained):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(trained.uri)
    experiment = client.get_experiment_by_name("imgclf")
    runs_before = {r.info.run_id for r in client.search_runs([experiment.experiment_id])}
    colleague = clone(trained, "colleague", rev="HEAD~1")  # before the experiment: learning rate 0.0087, no model
    assert not (colleague / "models" / "model.keras").exists()

    result = sh(
        ["dvc", "exp", "run", "--pull", "-S", f"train.learning_rate={LEARNING_RATE}"],
        colleague,
        {"MLFLOW_TRACKING_URI": trained.uri},
    )
    output = result.stdout + result.stderr
    assert "Stage 'train' is cached - skipping run, checking out outputs" in output, output
    assert "Running stage 'train'" not in output, output
    # evaluate and the stages after it rerun (seconds: they keep git-tracked files that DVC does not run-cache),
    # logging into the experiment's own run on the server, which the restored models/run.json names
    assert {r.info.run_id for r in client.search_runs([experiment.experiment_id])} == runs_before  # nothing trained
    assert read_json(colleague / "models" / "run.json") == read_json(trained.root / "models" / "run.json")
    assert (colleague / "models" / "model.keras").read_bytes() == (trained.root / "models" / "model.keras").read_bytes()
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], colleague).stdout


# -- the SSH remote: sshd on loopback, started here ------------------------------------------------


@pytest.fixture
def sshd(tmp_path):
    """An OpenSSH server on a free loopback port with its own config, host key and one authorized key
    (made here); yields (port, user, private key)."""
    binary = Path("/usr/sbin/sshd")
    if not binary.exists():
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("openssh-server is not installed and apt-get is not available to install it (needs root)")
        subprocess.run(["apt-get", "install", "-y", "-qq", "openssh-server"], check=True, capture_output=True)
    folder = tmp_path / "sshd"
    folder.mkdir()
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
    (folder / "authorized_keys").write_text((folder / "user_key.pub").read_text())
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\nPidFile {folder / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "Subsystem sftp internal-sftp\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    log = folder / "sshd.log"
    process = subprocess.Popen(
        [str(binary), "-D", "-e", "-f", str(config)], stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip

    def listening():
        assert process.poll() is None, "sshd exited:\n" + log.read_text()
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, 30, "sshd listening")
        import getpass

        yield port, getpass.getuser(), folder / "user_key"
    finally:
        stop_process_group(process, timeout_s=10)


@pytest.mark.slow
def test_an_ssh_remote_on_loopback_pushes_and_a_clone_pulls(trained, sshd, tmp_path):
    port, user, key = sshd
    storage = tmp_path / "ssh-remote"
    root = trained.root
    # all in .dvc/config.local (not in git): the module's repository stays as it was
    sh(["dvc", "remote", "add", "--local", "ssh", f"ssh://{user}@127.0.0.1:{port}{storage}"], root)
    sh(["dvc", "remote", "modify", "--local", "ssh", "keyfile", str(key)], root)
    try:
        sh(["dvc", "push", "-r", "ssh"], root)
        assert any(storage.rglob("*")), "nothing pushed"
        colleague = clone(trained, "ssh-clone")
        sh(["dvc", "remote", "add", "ssh", f"ssh://{user}@127.0.0.1:{port}{storage}"], colleague)
        sh(["dvc", "remote", "modify", "--local", "ssh", "keyfile", str(key)], colleague)
        sh(["dvc", "pull", "-r", "ssh"], colleague)
        assert "Data and pipelines are up to date" in sh(["dvc", "status"], colleague).stdout
    finally:
        sh(["dvc", "remote", "remove", "--local", "ssh"], root, check=False)


# -- 4. two search processes on one study ----------------------------------------------------------


@pytest.mark.slow
def test_two_search_processes_share_one_study_in_postgresql_and_one_parent_run(team):
    import optuna
    from mlflow.tracking import MlflowClient

    budget, study_name = 4, "shared"
    env = {"MLFLOW_TRACKING_URI": team.uri}
    cmd = ["python", "-m", "imgclf.tune", "--storage", team.optuna_url, "--study", study_name, "--trials", str(budget)]
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "PYTHONPATH": str(team.root), **env}  # fmt: skip
    logs = [team.base / f"search-{n}.log" for n in (1, 2)]
    processes = []
    for log in logs:  # started together: both race to create the study and its parent run
        with log.open("wb") as sink:
            process = subprocess.Popen(
                cmd, cwd=team.root, env=full_env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
            processes.append(process)
    try:
        for process, log in zip(processes, logs, strict=True):
            assert process.wait(timeout=400) == 0, log.read_text()[-3000:]
    finally:
        for process in processes:
            stop_process_group(process, timeout_s=10)

    study = optuna.load_study(study_name=study_name, storage=team.optuna_url)
    trials = study.trials
    numbers = sorted(t.number for t in trials)
    # MaxTrialsCallback checks after each of a process's trials: the other process may have one in flight
    assert budget <= len(trials) <= budget + 1 and numbers == list(range(len(trials)))
    assert all(t.state.is_finished() for t in trials)
    # Both joined the one study; how the trials split between them depends on timing (one could start
    # late and find the budget spent), so it is not asserted: only that no third process appears.
    assert study.user_attrs["processes_joined"] == 2
    assert 1 <= len({t.user_attrs["worker"] for t in trials}) <= 2, [t.user_attrs for t in trials]

    client = MlflowClient(team.uri)
    experiment = client.get_experiment_by_name("imgclf")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.tune_study = '{study_name}'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    assert study.user_attrs["mlflow_parent_run_id"] == parents[0].info.run_id
    assert len(children) == len(trials)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(int(r.data.tags["tune_trial"]) for r in children) == numbers


# -- quick checks, no servers ----------------------------------------------------------------------


def test_a_closed_tracking_port_is_one_line_within_seconds_and_a_local_store_is_not_checked(monkeypatch, tmp_path):
    from imgclf.io import PipelineError
    from imgclf.team import tracking

    monkeypatch.setattr(os, "environ", dict(os.environ))  # check_store sets MLflow's retry variables
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(PipelineError, match=r"is not reachable .*make tracking-server"):
        tracking.check_store(tmp_path)
    assert time.monotonic() - started < tracking.REACHABLE_TIMEOUT_S + 1
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.check_store(tmp_path).startswith("sqlite:///")


def test_joining_a_sqlite_study_is_locked_and_each_process_gets_its_own_sampler_seed(tmp_path, caplog):
    from imgclf.io import PipelineError
    from imgclf.train import tune
    from tests.conftest import shipped

    caplog.set_level("INFO", logger="imgclf.train.tune")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    settings = shipped("tune", study_name="locked", seed=7)
    with tune.study_lock(url, "locked"):
        first = tune.open_study(url, settings)
        other = subprocess.run(  # another process cannot join meanwhile: it gives up after its timeout
            [sys.executable, "-c", f"from imgclf.train import tune\nwith tune.study_lock({url!r}, 'locked', timeout_s=1): pass"],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(tune.__file__).parents[1])},
        )  # fmt: skip
    assert other.returncode != 0 and PipelineError.__name__ in other.stderr and "held for 1 s" in other.stderr
    with tune.study_lock(url, "locked"):  # released: the next process joins
        second = tune.open_study(url, settings)
    assert second.user_attrs["processes_joined"] == 2
    assert first.study_name == second.study_name
    seeds = [r.getMessage().split("sampler seed ")[1] for r in caplog.records if "sampler seed" in r.getMessage()]
    assert seeds == ["7)", "8)"]
