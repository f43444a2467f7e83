"""Multi-worker training (issue #17): the custom distributed loop, the launcher, and two real workers.

``model.fit`` fails under MultiWorkerMirroredStrategy with Keras 3.15 / TF 2.21 (keras-team/keras#20585),
so ``imgclf.train.distributed`` trains there with a step of its own, driving the same callbacks. The loop is
checked in this process under the default strategy against ``model.fit`` (same logs, same numbers,
resume, early stopping); the slow tests run the train stage as two local workers through
``python -m imgclf.launch``, as a user would.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from imgclf.paths import layout
from imgclf.train import distributed, training
from imgclf.train.plan import plan_training
from tests.conftest import data_stages_done, epochs_logged, run, set_params, shipped

TRAIN = shipped("train", learning_rate=0.01, batch_size=32, epochs=4, seed=1, schedule="cosine", warmup_fraction=0.1)


def _data(digits) -> training.TrainData:
    images, target = digits
    x = images[:, :, :, None]
    return training.TrainData(x[:320], target[:320], x[320:480], target[320:480], [str(d) for d in range(10)])


def _dense_model(params: dict) -> keras.Model:
    """Small and without dropout or BatchNorm: two runs on the same data and seed give the same numbers."""
    training.seed_everything(int(params["seed"]))
    inputs = keras.Input((8, 8, 1), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Dense(16, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def _custom_fit(model, data, params, run_dir: Path, patience: int = 0, extra=()) -> training.EpochLogger:
    """One phase through the custom loop, with the callbacks training.fit would give model.fit."""
    train = training.train_dataset(data.x_train, data.y_train, 10, int(params["batch_size"]), int(params["seed"]))
    val = training.eval_dataset(data.x_val, data.y_val, 10, int(params["batch_size"]))
    logger = training.EpochLogger()
    history = run_dir / "history.csv"
    run_dir.mkdir(parents=True, exist_ok=True)
    callbacks = training.callbacks(params, patience, run_dir / "train", history, logger, extra)
    distributed.fit_phase(model, train, val, 0, int(params["epochs"]), callbacks, chief=True)
    return logger


def _compiled(params, steps: int) -> keras.Model:
    model = _dense_model(params)
    training.compile_model(model, params, training.learning_rate(params, steps))
    return model


def test_the_custom_loop_logs_and_learns_what_model_fit_does(tmp_path, digits):
    """Same columns in history.csv, the same first epoch to float precision (same data, same steps, the
    same schedule), and as many optimizer steps: the loop is model.fit's, written out. Later epochs see
    the training set in another shuffled order (model.fit draws its iterators differently), so they
    only agree within noise."""
    data = _data(digits)
    steps = 10 * TRAIN["epochs"]  # 320 images / 32
    params = {**TRAIN, "early_stopping_patience": 0}
    reference = _compiled(params, steps)
    plan = plan_training(params, 320, data.y_val, 10)
    training.fit(reference, data, params, plan, tmp_path / "fit", tmp_path / "fit.csv")
    ours = _compiled(params, steps)
    _custom_fit(ours, data, params, tmp_path / "custom")

    expected = training.read_history(tmp_path / "fit.csv").drop(columns="epoch_time_s")
    got = training.read_history(tmp_path / "custom" / "history.csv").drop(columns="epoch_time_s")
    assert list(got.columns) == list(expected.columns) == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    np.testing.assert_allclose(got.iloc[0].to_numpy(), expected.iloc[0].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(got["loss"], expected["loss"], atol=0.05)
    np.testing.assert_allclose(got["val_accuracy"], expected["val_accuracy"], atol=0.1)
    assert got["val_accuracy"].iloc[-1] > 0.4  # it learned (chance: 0.1)
    assert int(ours.optimizer.iterations.numpy()) == int(reference.optimizer.iterations.numpy()) == steps


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch: int):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("interrupted")


def test_the_custom_loop_resumes_from_its_backup_with_the_optimizer_state(tmp_path, digits):
    data = _data(digits)
    steps = 10 * TRAIN["epochs"]
    first = _compiled(TRAIN, steps)
    with pytest.raises(RuntimeError, match="interrupted"):
        _custom_fit(first, data, TRAIN, tmp_path / "run", extra=[_Interrupt(2)])
    assert int(first.optimizer.iterations.numpy()) == 20
    saved = first.get_weights()

    resumed = _compiled(TRAIN, steps)  # a new process: fresh weights, optimizer at step 0
    logger = _custom_fit(resumed, data, TRAIN, tmp_path / "run")
    assert logger.first_epoch == 2
    assert training.read_history(tmp_path / "run" / "history.csv")["epoch"].tolist() == [0, 1, 2, 3]
    assert int(resumed.optimizer.iterations.numpy()) == steps  # restored at 20, then 20 more steps
    schedule = resumed.optimizer._learning_rate
    assert float(resumed.optimizer.learning_rate.numpy()) == pytest.approx(float(schedule(steps)))
    assert not any(np.array_equal(a, b) for a, b in zip(saved, resumed.get_weights(), strict=True))
    assert not (tmp_path / "run" / "train").exists()  # finished: BackupAndRestore removed its backup


def test_early_stopping_stops_the_custom_loop(tmp_path, digits):
    """A learning rate of 0 leaves val_loss where it is: no improvement, so patience 2 stops after 3 epochs."""
    params = {**TRAIN, "schedule": "constant", "learning_rate": 0.0, "epochs": 10}
    model = _compiled(params, 100)
    _custom_fit(model, _data(digits), params, tmp_path / "run", patience=2)
    history = training.read_history(tmp_path / "run" / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2]
    assert model.stop_training


# --- the launcher -------------------------------------------------------------------------------------

LAUNCH = [sys.executable, "-m", "imgclf.launch"]
REPO = Path(__file__).resolve().parents[1]


def _launch(args: list[str], cwd: Path = REPO, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(LAUNCH + args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def test_the_launcher_gives_each_worker_its_tf_config_and_prefixes_their_output():
    show = (
        "import json, os; c = json.loads(os.environ['TF_CONFIG']); print(c['task']['index'], *c['cluster']['worker'])"
    )
    result = _launch(["--workers", "2", "--", sys.executable, "-c", show])
    assert result.returncode == 0, result.stderr
    lines = sorted(result.stdout.splitlines())
    assert [line.split()[:3] for line in lines] == [["[worker", "0]", "0"], ["[worker", "1]", "1"]]
    clusters = {tuple(line.split()[3:]) for line in lines}
    assert len(clusters) == 1  # both see the same cluster...
    (workers,) = clusters
    assert len(set(workers)) == 2 and all(w.startswith("127.0.0.1:") for w in workers)  # ...on two ports


def test_the_launcher_stops_the_others_when_one_worker_dies(tmp_path):
    """Worker 1 fails at once; worker 0 would wait for it for ever (here: ignores SIGTERM and sleeps).
    The launcher kills it (SIGKILL after --grace) and exits with worker 1's status, in bounded time."""
    pid_file = tmp_path / "worker0.pid"
    script = f"""
import json, os, pathlib, signal, sys, time
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
pid_file = pathlib.Path({str(pid_file)!r})
if index == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pid_file.write_text(str(os.getpid()))
    time.sleep(600)
while not pid_file.exists():
    time.sleep(0.05)
sys.exit(3)
"""
    started = time.monotonic()
    result = _launch(["--workers", "2", "--grace", "1", "--", sys.executable, "-c", script])
    assert result.returncode == 3
    assert time.monotonic() - started < 60
    assert result.stderr.strip().splitlines()[-1] == "launch: worker 1 exited with status 3; stopped the others"
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # gone (and reaped by the launcher)


def test_the_launcher_says_so_when_the_command_cannot_start():
    result = _launch(["--workers", "2", "--", "no-such-command-imgclf"])
    assert result.returncode == 1
    assert result.stderr.strip().startswith("launch: error:")


# --- two real workers -------------------------------------------------------------------------------

# 100 images per class and split, a fifth of the labelled pool held out (400 validation images, so the
# accuracies compared below have a standard error of about 0.025), a small network, five short epochs.
TWO_WORKER_TRAIN = {
    "epochs": 5,
    "batch_size": 64,
    "learning_rate": 0.01,
    "early_stopping_patience": 0,
    "simple_cnn": {"filters": [8, 16], "final_size": 7, "dense": 32, "dropout": [0.25, 0.4], "l2": 0.0},
}


@pytest.fixture(scope="module")
def prepared_template(tmp_path_factory, fashion_mnist_dir) -> Path:
    return data_stages_done(
        tmp_path_factory.mktemp("multiworker"),
        ingest={"limit": 100},
        validate={"min_per_class": 20},
        preprocess={"val_fraction": 0.2},
        train=TWO_WORKER_TRAIN,
    )


@pytest.fixture
def prepared(prepared_template, tmp_path) -> Path:
    return Path(shutil.copytree(prepared_template, tmp_path / "repo", symlinks=True))


def _runs(root: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return client, client.search_runs([client.get_experiment_by_name("imgclf").experiment_id])


def _launch_train(root: Path, scratch: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(root), "TMPDIR": str(scratch)}
    return subprocess.run(
        [*LAUNCH, "--workers", "2"], cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_two_workers_train_like_one(prepared, tmp_path):
    one = Path(shutil.copytree(prepared, tmp_path / "one", symlinks=True))
    started = time.monotonic()
    run([sys.executable, "-m", "stages.train"], one)
    one_s = time.monotonic() - started
    started = time.monotonic()
    result = _launch_train(prepared, tmp_path / "scratch")
    two_s = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    print(f"one worker {one_s:.1f} s, two workers {two_s:.1f} s")

    out = result.stdout.splitlines()
    assert any(line.startswith("[worker 0]") and "MultiWorkerMirroredStrategy" in line for line in out)
    assert any(line.startswith("[worker 1]") and "train done in" in line for line in out)  # both ran to the end
    assert any(line.startswith("[worker 0]") and "wrote" in line and "model.keras" in line for line in out)
    assert not any(line.startswith("[worker 1]") and " wrote " in line for line in out)  # only the chief writes
    assert not list((tmp_path / "scratch").iterdir())  # the other worker's temporary folder is gone

    paths = layout(prepared)
    history = pd.read_csv(paths.history)
    assert history["epoch"].tolist() == list(range(5))
    assert not any(paths.train_backup.iterdir())
    client, runs = _runs(prepared)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one MLflow run: the chief's
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_accuracy")] == list(range(5))
    setup = runs[0].data.tags["training_setup"]
    assert setup.startswith("MultiWorkerMirroredStrategy on 2 workers, 2 replicas in all; this worker: 1 device"), setup

    # The same data, seed and global batches; batch norm sees half a batch per worker, dropout other
    # masks: not the same numbers, the same model within noise. 400 validation images: a standard error
    # of about 0.025 per accuracy; 0.1 is four of them, while a broken step (a loss not averaged over
    # the global batch, a schedule that does not advance, unsynchronised workers) lands far off or at
    # chance (0.1).
    single = pd.read_csv(layout(one).history).iloc[-1]
    double = history.iloc[-1]
    print(f"val_accuracy one {single.val_accuracy:.4f} two {double.val_accuracy:.4f}")
    assert double.val_accuracy > 0.5
    assert abs(double.val_accuracy - single.val_accuracy) < 0.1
    assert abs(double.val_loss - single.val_loss) < 0.25


@pytest.mark.slow
def test_two_workers_killed_mid_way_resume_together(prepared, tmp_path):
    """Stopped through the launcher after two epochs of ten (eight epochs, over ten seconds, of margin
    for the polling), started again: the history continues and the MLflow run is the same."""
    set_params(prepared, train={"epochs": 10})
    paths = layout(prepared)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(prepared), "TMPDIR": str(scratch)}
    log = tmp_path / "killed.log"
    with log.open("wb") as sink:
        # --grace 0: SIGKILL right after SIGTERM, a kill at a moment the training does not choose
        launcher = subprocess.Popen(
            [*LAUNCH, "--workers", "2", "--grace", "0"], cwd=prepared, env=env, stdout=sink, stderr=sink
        )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and launcher.poll() is None and epochs_logged(paths) < 2:
        time.sleep(0.2)
    assert launcher.poll() is None, "training ended before it could be stopped: " + log.read_text()[-3000:]
    assert epochs_logged(paths) >= 2, "no two epochs logged within 600 s"
    launcher.send_signal(signal.SIGTERM)  # as a scheduler stops a job: the launcher stops both workers
    assert launcher.wait(timeout=120) == 130
    assert not paths.model.exists()

    result = _launch_train(prepared, scratch)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "resumed from backup: continuing at epoch" in result.stdout
    assert pd.read_csv(paths.history)["epoch"].tolist() == list(range(10))  # every epoch once: the count continued
    client, runs = _runs(prepared)
    assert len(runs) == 1  # the resumed training logged into the run the chief started
    assert int(runs[0].data.tags["resumed_from_epoch"]) >= 1
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")]
    assert sorted(set(steps)) == list(range(10))
    assert json.loads(paths.run_info.read_text())["run_id"] == runs[0].info.run_id
