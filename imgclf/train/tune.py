"""Hyperparameter search: Optuna's TPE sampler over ``params.yaml``'s ``tune.space``, each trial a
short training exactly like the train stage's, pruned on its per-epoch validation metric.

Run it as ``python -m imgclf.tune`` (``make tune``) after ``dvc repro augment``. It is a command and
not a DVC stage: a study is state that grows (trials add up across runs, and several processes or
machines can work on one study through a shared RDB storage), and its result depends on timing
(pruning, time limits), so it is not a function of its dependencies that DVC could cache; and
``dvc status`` would list it as changed forever. What it finds is applied the reproducible way: a
``dvc exp run -S ...`` line (printed, or queued with ``--queue``), whose experiment DVC tracks.

Every trial is an MLflow child run under one parent run per study (its id kept in the study's user
attributes, so later runs of the search and other processes log under the same parent). The
search writes ``reports/tune/``: the trials table, the best params with the command that applies
them, and the optimization-history and parameter-importance plots.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import keras
import matplotlib
import mlflow
import numpy as np
import optuna
from optuna.trial import TrialState
from optuna_integration import KerasPruningCallback

from imgclf.io import PipelineError, atomic_path, file_lock, write_csv, write_json
from imgclf.params import SCHEMA, load_section
from imgclf.paths import Layout, layout
from imgclf.team import tracking
from imgclf.train import training
from imgclf.train.models import build_model
from imgclf.train.plan import plan_training

matplotlib.use("Agg")
log = logging.getLogger(__name__)
PARENT_RUN_ATTR = "mlflow_parent_run_id"
JOINED_ATTR = "processes_joined"
LOCK_TIMEOUT_S = 120
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# -- the search space: dotted keys into the train section ---------------------------------------


def _parts(key: str) -> list[str | int]:
    """``train.simple_cnn.dropout.1`` -> ['simple_cnn', 'dropout', 1] (a path inside the train section)."""
    section, *rest = key.split(".")
    if section != "train" or not rest:
        raise PipelineError(f"tune.space: {key!r} is not a train param (train.<key>); only training is searched")
    return [int(part) if part.isdigit() else part for part in rest]


def _get(params: dict, key: str):
    value = params
    for part in _parts(key):
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            raise PipelineError(f"tune.space: {key} is not in params.yaml's train section") from None
    if isinstance(value, dict | list):
        raise PipelineError(f"tune.space: {key} is a section or list; search one of its values (e.g. {key}.0)")
    return value


def with_values(train: dict, values: dict) -> dict:
    """A copy of the train section with the dotted ``values`` set, checked against the train schema."""
    import copy

    from pydantic import ValidationError

    result = copy.deepcopy(train)
    for key, value in values.items():
        _get(result, key)  # exists and is a single value
        *path, last = _parts(key)
        target = result
        for part in path:
            target = target[part]
        target[last] = value
    try:
        SCHEMA["train"].model_validate(result)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in ("train", *first["loc"]))
        raise PipelineError(f"tune.space gives {where} = {first['input']!r}: {first['msg']}") from None
    return result


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """One value per searched key, drawn by the trial's sampler."""
    values = {}
    for key, spec in space.items():
        if "choices" in spec:
            values[key] = trial.suggest_categorical(key, spec["choices"])
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
            values[key] = trial.suggest_int(key, spec["low"], spec["high"], log=spec["log"])
        else:
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=spec["log"])
    return values


def check_space(train: dict, space: dict) -> None:
    """Fail before any training when a key is unknown or a bound is not a valid value of its param."""
    if not space:
        raise PipelineError("tune.space is empty: name at least one train param to search")
    for key, spec in space.items():
        _get(train, key)
        if "low" in spec and spec["low"] >= spec["high"]:
            raise PipelineError(f"tune.space: {key}: low must be below high")
        if spec.get("log") and spec["low"] <= 0:
            raise PipelineError(f"tune.space: {key}: a log scale needs low > 0")
        for value in spec.get("choices") or (spec["low"], spec["high"]):
            with_values(train, {key: value})


def overrides(train: dict, keys) -> list[str]:
    """``dvc exp run -S`` arguments that set ``keys`` as in ``train``; a list item sets its whole list."""
    result = {}
    for key in keys:
        parts = key.split(".")
        while parts[-1].isdigit():
            parts.pop()
        value = train
        for part in parts[1:]:
            value = value[part]
        result[".".join(parts)] = value
    return [f"{key}={_exact(value)}" for key, value in result.items()]


def _exact(value) -> str:
    """A value as a -S override that sets exactly it (floats in their shortest round-trip form)."""
    if isinstance(value, list):
        return "[" + ",".join(_exact(item) for item in value) + "]"
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, float) else str(value)


def _short(value) -> str:
    """A value for the log (floats to 4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# -- data ------------------------------------------------------------------------------------------


def subset(x: np.ndarray, y: np.ndarray, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified, seeded subset of at most ``limit`` rows, in the arrays' order."""
    if limit is None or len(y) <= limit:
        return np.asarray(x), np.asarray(y)
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    try:
        keep, _ = train_test_split(rows, train_size=limit, stratify=y, random_state=seed)
    except ValueError:  # a class too small to stratify: a plain seeded sample
        keep = np.random.default_rng(seed).choice(rows, size=limit, replace=False)
    keep = np.sort(keep)
    return np.asarray(x)[keep], np.asarray(y)[keep]


def search_data(paths: Layout, train: dict, tune: dict) -> training.TrainData:
    data = training.load_train_data(paths, train["use_augmented"])
    x_train, y_train = subset(data.x_train, data.y_train, tune["max_train_images"], tune["seed"])
    x_val, y_val = subset(data.x_val, data.y_val, tune["max_val_images"], tune["seed"])
    return training.TrainData(x_train, y_train, x_val, y_val, data.class_names)


# -- the study -------------------------------------------------------------------------------------


def storage_url(paths: Layout, storage: str | None) -> str:
    return storage or f"sqlite:///{tracking.store_root(paths.root) / 'optuna.db'}"


def shown_url(url: str) -> str:
    """The storage URL without its password, for logs and MLflow."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@contextlib.contextmanager
def study_lock(url: str, study_name: str, timeout_s: float = LOCK_TIMEOUT_S):
    """Hold a lock on the study across processes and machines while one joins it: two searches
    started at the same moment would otherwise both see a study without a parent run and both
    create one. PostgreSQL: an advisory lock (released by the server if the process dies);
    MySQL: GET_LOCK; sqlite: an flock on a file beside the database."""
    from sqlalchemy import create_engine, exc, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    parsed = make_url(url)
    backend, key = parsed.get_backend_name(), f"imgclf.tune:{study_name}"
    if backend in ("postgresql", "mysql"):
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                if backend == "postgresql":
                    number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
                    connection.execute(text(f"SET lock_timeout = '{int(timeout_s)}s'"))
                    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": number})
                    release = text("SELECT pg_advisory_unlock(:key)"), {"key": number}
                else:
                    got = connection.execute(text("SELECT GET_LOCK(:key, :t)"), {"key": key, "t": int(timeout_s)})
                    if got.scalar() != 1:
                        raise PipelineError(f"study {study_name!r}: another search held its lock for {timeout_s:.0f} s")
                    release = text("SELECT RELEASE_LOCK(:key)"), {"key": key}
                try:
                    yield
                finally:
                    connection.execute(*release)
        except exc.OperationalError as error:
            reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
            raise PipelineError(f"Optuna storage {shown_url(url)}: {reason}") from None
        finally:
            engine.dispose()
    elif (database := tracking.sqlite_file(url)) is not None:
        # The lock also covers the sqlite file's first use: open_study creates Optuna's tables, and two
        # processes creating them at once fail ("table alembic_version already exists").
        lock_file = database.with_name(database.name + ".lock")
        with file_lock(lock_file, f"study {study_name!r}", timeout_s):
            yield
    else:
        log.warning("no cross-process lock for %s storage: start one search process at a time", backend)
        yield


def open_study(url: str, tune: dict) -> optuna.Study:
    """Create the study or join it (call it under :func:`study_lock`). Each process that joins takes
    the next number of the study's ``processes_joined`` counter and seeds its sampler with
    ``tune.seed`` plus that number: a later run of the search, or a second process started at the
    same moment, does not draw the first one's random start-up points again. (A study made before
    the counter starts it at its number of trials, the seed it had.)"""
    with warnings.catch_warnings():  # heartbeats are "experimental": they mark a killed process's trial failed
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    direction = "minimize" if tune["metric"].endswith("loss") else "maximize"
    try:
        existing = optuna.load_study(study_name=tune["study_name"], storage=storage)
    except KeyError:
        existing = None
    if existing is not None and existing.direction.name.lower() != direction:
        raise PipelineError(
            f"study {tune['study_name']!r} in {shown_url(url)} was created to {existing.direction.name.lower()} "
            f"its objective, and tune.metric {tune['metric']} must be {direction}d: choose another tune.study_name"
        )
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=tune["pruner"]["startup_trials"], n_warmup_steps=tune["pruner"]["warmup_epochs"]
    )
    study = optuna.create_study(
        study_name=tune["study_name"], storage=storage, direction=direction, pruner=pruner, load_if_exists=True
    )
    joined = int(study.user_attrs.get(JOINED_ATTR, len(existing.trials) if existing else 0))
    study.set_user_attr(JOINED_ATTR, joined + 1)
    study.sampler = optuna.samplers.TPESampler(seed=int(tune["seed"]) + joined)
    log.info("joined study %r as its process %d (sampler seed %d)", study.study_name, joined + 1, tune["seed"] + joined)
    return study


def enqueue_current(study: optuna.Study, train: dict, space: dict) -> None:
    """A new study's first trial is params.yaml as it is, so the search shows what it beats."""
    current = {key: _get(train, key) for key in space}
    outside = [
        key
        for key, spec in space.items()
        if (
            current[key] not in spec["choices"]
            if "choices" in spec
            else not (isinstance(current[key], int | float) and spec["low"] <= current[key] <= spec["high"])
        )
    ]
    if outside:
        log.info("params.yaml's %s outside tune.space: the first trial is not the current params", ", ".join(outside))
        return
    study.enqueue_trial(current)
    log.info("trial 0 is params.yaml as it is")


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def parent_run(study: optuna.Study, paths: Layout, train: dict, tune: dict, data_hash: str, url: str) -> str:
    """The study's MLflow parent run: the one its user attributes name, or a new one (call it under
    :func:`study_lock`, so that processes joining at once share one)."""
    client = mlflow.MlflowClient()
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id:
        try:
            client.get_run(run_id)
            return run_id
        except mlflow.exceptions.MlflowException:
            log.warning("the study's MLflow parent run %s is not in this store: starting a new one", run_id)
    tags = tracking.run_tags(paths.root, data_hash, train["model"]) | {"tune_study": tune["study_name"]}
    with mlflow.start_run(run_name=f"tune {tune['study_name']}", tags=tags, log_system_metrics=False) as run:
        settings = {k: v for k, v in tune.items() if k != "space"} | {"storage": shown_url(url)}
        mlflow.log_params(tracking.flatten(settings, "tune.") | tracking.flatten(tune["space"], "tune.space."))
        mlflow.log_params({"train.model": train["model"]})
    study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
    return run.info.run_id


def objective_for(study: optuna.Study, data: training.TrainData, train: dict, tune: dict):
    """The objective: one short training with the trial's values, logged as a child run of the
    active (parent) run; returns its best epoch's metric. Plain MLflow: optuna-integration's
    MLflowCallback is deprecated (4.9) and would log a trial only after it ends."""
    metric, best = tune["metric"], (min if tune["metric"].endswith("loss") else max)
    n_classes = len(data.class_names)

    def objective(trial: optuna.Trial) -> float:
        params = with_values(train, suggest(trial, tune["space"]))
        params["epochs"], params["early_stopping_patience"] = int(tune["epochs"]), 0  # the pruner stops early
        name = f"{study.study_name} trial {trial.number}"
        worker = f"{socket.gethostname()}:{os.getpid()}"  # which search process ran it
        trial.set_user_attr("worker", worker)
        tags = {"tune_study": study.study_name, "tune_trial": str(trial.number), "tune_worker": worker}
        with mlflow.start_run(run_name=name, nested=True, tags=tags, log_system_metrics=False):
            mlflow.log_params(trial.params)
            keras.backend.clear_session(free_memory=True)
            training.seed_everything(int(params["seed"]))  # every trial starts from the same weights and order
            plan = plan_training(params, len(data.x_train), data.y_val, n_classes)
            model = build_model(params["model"], data.x_train.shape[1:], n_classes, params)
            plan, _ = training.resolve_learning_rate(model, data, params, plan)  # a range test when not searched
            training.compile_for_plan(model, params, plan)
            mlflow.log_params(plan.mlflow_params())
            callbacks = [tracking.EpochMetrics(), KerasPruningCallback(trial, metric)]
            started = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="imgclf-trial-") as folder:
                history_path = Path(folder) / "history.csv"
                try:
                    training.fit(model, data, params, plan, Path(folder), history_path, callbacks)
                    pruned = None
                except optuna.TrialPruned as stop:  # not a failure: the run ends FINISHED, tagged PRUNED
                    pruned = stop
                history = training.read_history(history_path)
            value = float(best(history[metric]))
            trial.set_user_attr("epochs", len(history))
            trial.set_user_attr("train_s", round(time.perf_counter() - started, 1))
            mlflow.log_metric(f"best_{metric}", value)
            mlflow.set_tags({"state": "PRUNED" if pruned else "COMPLETE", "epochs": str(len(history))})
        if pruned:
            log.info("trial %d: pruned after epoch %d (%s %.4f)", trial.number, len(history), metric, value)
            raise pruned
        shown = ", ".join(f"{key.removeprefix('train.')}={_short(v)}" for key, v in trial.params.items())
        log.info("trial %d: %s %.4f in %d epochs (%s)", trial.number, metric, value, len(history), shown)
        return value

    return objective


# -- reports ---------------------------------------------------------------------------------------


def best_params_report(study: optuna.Study, train: dict, tune: dict, url: str) -> dict:
    trials = finished(study)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in FINISHED}
    report = {"study": study.study_name, "storage": shown_url(url), "metric": tune["metric"], "trials": counts}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return report | {"best_trial": None, "params": {}, "command": None}
    best = study.best_trial
    applied = with_values(train, best.params)
    sets = overrides(applied, best.params)
    command = shlex.join(["dvc", "exp", "run", *[arg for value in sets for arg in ("-S", value)]])
    return report | {
        "best_trial": best.number,
        "best_value": best.value,
        "params": best.params,
        "epochs_per_trial": tune["epochs"],
        "overrides": sets,
        "command": command,
    }


def plots(study: optuna.Study, folder: Path, target: str, seed: int) -> list[Path]:
    """Optuna's own optimization-history and parameter-importance plots, as PNG (matplotlib backend)."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    written = []
    figures = {
        "optimization_history.png": optuna_plots.plot_optimization_history,
        "param_importances.png": optuna_plots.plot_param_importances,
    }
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    for name, plot in figures.items():
        if name == "param_importances.png" and len(complete) < 2:
            log.warning("parameter importances need two finished trials: %s not written", name)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if name == "param_importances.png":  # fANOVA's forest is random: seeded, the figure repeats
                evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
                axes = plot(study, evaluator=evaluator, target_name=target)
            else:
                axes = plot(study, target_name=target)
        figure = axes.figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        with atomic_path(folder / name) as tmp:
            figure.savefig(tmp, format="png", dpi=90, metadata={"Software": None})
        plt.close(figure)
        written.append(folder / name)
    return written


def write_reports(study: optuna.Study, paths: Layout, train: dict, tune: dict, url: str, folder: Path) -> dict:
    """The trials table, the best params and the plots, written into ``folder`` under their names in
    ``reports/tune/`` (search writes them into a folder of its own, then :func:`publish_reports`)."""
    table = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    if "duration" in table:
        table["duration"] = table["duration"].dt.total_seconds().round(1)
    write_csv(folder / paths.tune_trials.name, table)
    report = best_params_report(study, train, tune, url)
    write_json(folder / paths.tune_best.name, report)
    plots(study, folder, f"best {tune['metric']} of a trial", int(tune["seed"]))
    return report


def publish_reports(private: Path, folder: Path, artifact_path: str = "tune") -> list[Path]:
    """Copy this process's reports (the files in ``private``, a folder no other process writes) into the
    shared ``folder``, each atomically, and log the same files to the active MLflow run from ``private``;
    return the paths written in ``folder``.

    Other search processes write into ``folder`` too, each file through a ``.<name>.tmp-*`` file that
    it renames over the report: logging ``folder`` itself (``mlflow.log_artifacts``) picked up another
    process's half-written temporary file, or failed with FileNotFoundError when it was renamed away
    between MLflow listing the folder and copying it. So a process logs only what it wrote."""
    published = []
    for source in sorted(path for path in private.iterdir() if path.is_file()):
        with atomic_path(folder / source.name) as tmp:
            shutil.copyfile(source, tmp)
        published.append(folder / source.name)
    mlflow.log_artifacts(str(private), artifact_path)
    return published


# -- the command -----------------------------------------------------------------------------------


def search(paths: Layout, train: dict, tune: dict, queue: bool = False) -> dict:
    check_space(train, tune["space"])
    url = storage_url(paths, tune["storage"])
    data = search_data(paths, train, tune)
    training.set_precision(train["mixed_precision"])
    tracking.configure(paths.root, train["experiment_name"])
    with study_lock(url, tune["study_name"]):
        study = open_study(url, tune)
        if not study.trials:  # under the lock: two processes starting a study enqueue it once
            enqueue_current(study, train, tune["space"])
        parent = parent_run(study, paths, train, tune, training.data_hash(data), url)
    remaining = tune["trials"] - len(finished(study))
    log.info(
        "study %r in %s: %d of %d trials done; %d training / %d validation images, %d epochs a trial",
        study.study_name, shown_url(url), len(finished(study)), tune["trials"],
        len(data.y_train), len(data.y_val), tune["epochs"],
    )  # fmt: skip
    if remaining > 0:
        # Checked after each of this process's trials, counting every process's trials, those still
        # running included: the study ends at its budget, or one over when two processes check at once.
        budget = optuna.study.MaxTrialsCallback(tune["trials"], states=None)
        timeout = tune["timeout_min"] * 60 if tune["timeout_min"] else None
        with mlflow.start_run(run_id=parent):
            tracking.log_splits(paths, {"train": (data.x_train, data.y_train, "training"),
                                        "val": (data.x_val, data.y_val, "validation")})  # fmt: skip
            study.optimize(
                objective_for(study, data, train, tune),
                n_trials=remaining,
                timeout=timeout,
                callbacks=[budget],
                catch=(),
                gc_after_trial=True,
            )
    # Under the study's lock, the processes of one study write their reports and log them into its one
    # parent run in turn (never two copying the same artifact at once; the one that writes last has seen
    # every trial finished before it). Each writes into a folder of its own and publishes from there.
    with study_lock(url, tune["study_name"]), tempfile.TemporaryDirectory(prefix="imgclf-tune-") as private:
        report = write_reports(study, paths, train, tune, url, Path(private))
        with mlflow.start_run(run_id=parent):
            if report.get("best_trial") is not None:
                mlflow.log_metrics({f"best_{tune['metric']}": report["best_value"], "best_trial": report["best_trial"]})
                mlflow.set_tag("best_command", report["command"])
            publish_reports(Path(private), paths.tune_reports, "tune")
    if queue and report.get("command"):
        command = shlex.split(report["command"])
        try:
            queued = subprocess.run(
                [*command[:3], "--queue", *command[3:]], cwd=paths.root, capture_output=True, text=True
            )
        except FileNotFoundError:
            raise PipelineError("--queue needs dvc on the PATH (source .venv/bin/activate)") from None
        if queued.returncode != 0:
            raise PipelineError(f"dvc exp run --queue failed: {(queued.stderr or queued.stdout).strip()}")
        report["queued"] = True
    return report


def main(argv: list[str] | None = None) -> int:
    from imgclf.stage import setup_logging

    parser = argparse.ArgumentParser(prog="python -m imgclf.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, help="the study's trial budget (default: tune.trials)")
    parser.add_argument("--study", help="study name (default: tune.study_name)")
    parser.add_argument("--storage", help="Optuna storage URL (default: tune.storage, else sqlite optuna.db)")
    parser.add_argument("--queue", action="store_true", help="queue the best params as a DVC experiment")
    args = parser.parse_args(argv)
    setup_logging("tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our one line per trial says it shorter
    try:
        paths = layout()
        train, tune = load_section("train"), load_section("tune")
        if args.trials is not None:
            tune["trials"] = args.trials
        if args.study:
            tune["study_name"] = args.study
        if args.storage:
            tune["storage"] = args.storage
        report = search(paths, train, tune, queue=args.queue)
    except PipelineError as error:
        print(f"tune: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tune: interrupted (finished trials are kept in the study)", file=sys.stderr)
        return 130
    counts = ", ".join(f"{n} {state}" for state, n in report["trials"].items())
    print(f"study {report['study']}: {counts}; reports in {paths.tune_reports.relative_to(paths.root)}/")
    if report.get("command"):
        print(f"best: trial {report['best_trial']}, {report['metric']} {report['best_value']:.4f}")
        print(("queued: " if report.get("queued") else "apply it with:\n  ") + report["command"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
