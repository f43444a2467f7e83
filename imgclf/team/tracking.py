"""MLflow tracking: one run per training, shared by evaluate and export through ``models/run.json``.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set (a shared server), else
``sqlite:///mlflow.db`` at the root of the repository the user works in, with artifacts in
``mlruns/`` beside it (both git-ignored). "The repository the user works in" is ``DVC_ROOT``
when DVC sets it: a queued or ``--temp`` experiment runs in a temporary copy under
``.dvc/tmp/exps/`` that DVC deletes afterwards, and its runs must land in the workspace's store
like every other run (and find the run that ``models/run.json`` names when it does not retrain).
Processes that start together (``dvc queue start -j 2``) open a fresh store in turn, under a lock
file beside it (``mlflow.db.lock``, :func:`store_lock`), so one creates its schema and the others find it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from imgclf.io import PipelineError, file_lock, read_json, require, write_json
from imgclf.paths import Layout

log = logging.getLogger(__name__)


# Without it, MLflow 3's UI opens an experiment in its GenAI view (traces, prompts).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def store_root(root: Path) -> Path:
    """Where the local store lives: the workspace DVC runs experiments for, else ``root``."""
    return Path(os.environ.get("DVC_ROOT") or root).resolve()


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_root(root) / 'mlflow.db'}"


# MLflow retries a failed request 7 times with exponential backoff (minutes) by default: a stage
# against a server that is down would hang that long. Ours, unless the user sets them.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
REACHABLE_TIMEOUT_S = 5.0


def check_store(root: Path) -> str:
    """Fail fast, in one line, when the tracking store is a server that does not answer; return its URI.

    Stages call it before they read or write anything, so a server that is down costs seconds and
    leaves no half-written outputs. A local store needs no check."""
    uri = tracking_uri(root)
    if not uri.startswith(("http://", "https://")):
        return uri
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=REACHABLE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        pass  # it answered (a proxy in front may not know /health): reachable
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise PipelineError(
            f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not reachable ({reason}): "
            "start it (`make tracking-server`) or unset MLFLOW_TRACKING_URI to log to the local mlflow.db"
        ) from None
    return uri


# The store's first use creates its schema (MLflow's tables, migrated to the installed version) and
# the experiment. A local sqlite store does that in whichever process opens it first, and two processes
# that open a fresh mlflow.db at the same moment (``dvc queue start -j 2``, two searches) both create it:
# one fails in alembic ("table ... already exists"). They take turns under a lock file beside the database.
# Creating the schema takes seconds; a lock held for minutes is a stuck process, reported, not waited on.
STORE_LOCK_TIMEOUT_S = 300


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the working directory, as sqlite opens
    it), or None for a server, another database or an in-memory one."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    return None if database in (None, "", ":memory:") or database.startswith("file:") else Path(database)


@contextlib.contextmanager
def store_lock(uri: str, timeout_s: float = STORE_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Across processes, one at a time opens (and so creates or migrates) the local sqlite store at
    ``uri``: an flock on ``<database>.lock`` beside it (``mlflow.db.lock``). A server serialises its
    own clients: nothing to hold."""
    database = sqlite_file(uri)
    if database is None:
        yield
        return
    with file_lock(database.with_name(database.name + ".lock"), f"MLflow store {uri}", timeout_s):
        yield


def configure(root: Path, experiment_name: str) -> str:
    """Point MLflow at our store and experiment (created as a model-training one); return its id.

    The store's first use (its schema) and the experiment's creation happen under :func:`store_lock`,
    so processes that start at once on a fresh store take turns; the later ones find both made."""
    uri = check_store(root)
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        client = MlflowClient(uri)  # opens the store: a fresh sqlite file gets its schema here
        experiment_id = _experiment(client, experiment_name, uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _experiment(client: MlflowClient, experiment_name: str, uri: str) -> str:
    """The experiment's id, created if missing. Against a server, another process may create it
    between our look-up and our create: its RESOURCE_ALREADY_EXISTS means "read it again"."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        # A local store's artifacts go beside it, wherever the run's working directory is (MLflow's
        # default is ./mlruns of the process that creates the experiment: in a DVC experiment, the
        # temporary copy DVC deletes); a server decides for itself. (Not "is MLFLOW_TRACKING_URI
        # set?": MLflow 3's set_tracking_uri sets it.)
        database = sqlite_file(uri)
        location = (database.resolve().parent / "mlruns").as_uri() if database else None
        try:
            return client.create_experiment(experiment_name, artifact_location=location, tags=EXPERIMENT_KIND)
        except mlflow.exceptions.MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is None:  # created and deleted meanwhile: nothing sensible to join
                raise
            log.info("experiment %r was created by another process meanwhile: joining it", experiment_name)
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def flatten(params: dict, prefix: str = "") -> dict[str, str]:
    """{'train': {'lr': 1}} -> {'train.lr': '1'}; lists are kept as one value."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def git_commit(root: Path) -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip() or None


def run_tags(root: Path, data_hash: str, model_name: str) -> dict[str, str]:
    tags = {"data_hash": data_hash, "model": model_name}
    if commit := git_commit(root):
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    if exp_name := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = exp_name
    if baseline := os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = baseline
    return tags


def run_name(root: Path, model: str, learning_rate: float, batch_size: int) -> str:
    """The DVC experiment's name when DVC runs one; else what the run is: model, two key params, commit.

    Set explicitly: MLflow's random names come from the global random state, which training seeds
    before the run starts, so every run of the project used to be called the same."""
    if name := os.environ.get("DVC_EXP_NAME"):
        return name
    commit = git_commit(root)
    return f"{model} lr={learning_rate:g} batch={batch_size}" + (f" @{commit[:7]}" if commit else "")


def split_digest(folder: Path) -> str | None:
    """A hash of one preprocessed split's files (names and bytes, streamed): the same images in the same
    order give the same digest, whatever happened to the other splits."""
    import hashlib

    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:32]


def log_splits(paths: Layout, splits: dict[str, tuple]) -> None:
    """Preprocessed splits as MLflow dataset inputs of the active run ("Datasets" on its page), from
    ``{split: (x, y, context)}``: name = the split, digest = a hash of that split's files (two runs
    tested on the same images show the same digest, so promote can pair them, even when the training
    images changed: DVC's hash of all of ``data/preprocessed`` changed with every new training photo),
    source = the DVC path at the git commit."""
    commit = git_commit(paths.root)
    for split, (x, y, context) in splits.items():
        digest = split_digest(paths.preprocessed_split(split))
        folder = paths.preprocessed_split(split).relative_to(paths.root).as_posix()
        source = f"{folder}@{commit[:7]}" if commit else folder
        with warnings.catch_warnings():  # "source can be interpreted in multiple ways": it is a local path
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(x, targets=y, name=split, digest=digest, source=source)
        mlflow.log_input(dataset, context=context, tags={"dvc_path": folder, "images": str(len(y))})


def write_run_info(paths: Layout, run: mlflow.entities.Run, registered: dict | None) -> None:
    write_json(
        paths.run_info,
        {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "model_uri": f"runs:/{run.info.run_id}/model",
            "registered_model": registered,
        },
    )


@contextlib.contextmanager
def resumable_run(
    run_dir: Path, root: Path, experiment_name: str, name: str | None = None
) -> Iterator[tuple[mlflow.ActiveRun, bool]]:
    """The training's MLflow run: a new one, or, when ``run_dir`` (the training's backup folder) says a
    killed training started one, that run again, so a resumed training logs where it began.
    Yields the active run and whether it was resumed."""
    experiment_id = configure(root, experiment_name)
    run_id_file = run_dir / "mlflow_run_id"
    run_id = run_id_file.read_text().strip() if run_id_file.exists() else None
    start = {"run_id": run_id} if run_id else {"run_name": name}
    with mlflow.start_run(experiment_id=experiment_id, log_system_metrics=False, **start) as run:
        run_id_file.write_text(run.info.run_id)
        if run_id is not None:
            log.info("continuing MLflow run %s", run_id)
        yield run, run_id is not None


@contextlib.contextmanager
def training_run(paths: Layout) -> Iterator[mlflow.ActiveRun]:
    """Reopen the training's run (from ``models/run.json``) so evaluate and export log into it."""
    info = read_json(require(paths.run_info, "train"))
    uri = check_store(paths.root)
    mlflow.set_tracking_uri(uri)
    try:
        with store_lock(uri):  # the store's first use in this process (its schema, were the file new)
            MlflowClient(uri).get_run(info["run_id"])
    except mlflow.exceptions.MlflowException as error:
        raise PipelineError(
            f"MLflow run {info['run_id']} from {paths.run_info} is not in {tracking_uri(paths.root)}: "
            "was mlflow.db deleted or MLFLOW_TRACKING_URI changed? Rerun training with `dvc repro --force train`."
        ) from error
    with mlflow.start_run(run_id=info["run_id"]) as run:
        yield run


class _KerasFlavor:
    """``mlflow.keras`` with a workaround for mlflow/mlflow#16183 (open): ``log_model`` with an
    ``input_example`` writes the example into a folder it has not created yet."""

    __name__ = "mlflow.keras"

    def __getattr__(self, name):
        return getattr(mlflow.keras, name)

    @staticmethod
    def save_model(path, **kwargs):
        os.makedirs(path, exist_ok=True)
        return mlflow.keras.save_model(path=path, **kwargs)


def serving_requirements() -> list[str]:
    """The pins a served copy of the model needs. Given explicitly, MLflow skips inferring them, which
    starts a subprocess that imports the model (10-17 s per training, most of a small run's overhead)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("tensorflow", "keras", "numpy")]


def log_keras_model(model, example, registered_model_name: str | None):
    """Log the model with MLflow's Keras flavor, a signature and an input example; register it if named.

    MLflow predicts on the example itself, with Keras' default progress bar: off meanwhile, so a log
    file gets no stray bars."""
    import keras

    signature = mlflow.models.infer_signature(example, model.predict(example, verbose=0))
    was_interactive = keras.config.is_interactive_logging_enabled()
    keras.utils.disable_interactive_logging()
    try:
        return mlflow.models.Model.log(
            artifact_path=None,
            name="model",
            flavor=_KerasFlavor(),
            model=model,
            signature=signature,
            input_example=example,
            registered_model_name=registered_model_name or None,
            pip_requirements=serving_requirements(),
        )
    finally:
        if was_interactive:
            keras.utils.enable_interactive_logging()


class EpochMetrics(mlflow.keras.MlflowCallback):
    """MLflow's Keras callback (per-epoch metrics), logging the optimizer params and model summary
    only when ``log_setup``: a fine-tuning phase or a resumed training has a new optimizer whose
    values would "change" params already logged, which MLflow refuses."""

    def __init__(self, log_setup: bool = True):
        super().__init__()
        self.log_setup = log_setup

    def on_train_begin(self, logs=None):
        if self.log_setup:
            self.log_setup = False
            super().on_train_begin(logs)


def log_range_test(test) -> None:
    """The learning-rate range test (:class:`imgclf.train.lr_finder.RangeTest`) as a figure and a CSV on the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.semilogx(test.learning_rates, test.losses, alpha=0.35, label="loss (one batch)")
    ax.semilogx(test.learning_rates, test.smoothed, label="smoothed")
    ax.axvline(test.learning_rate, color="k", linestyle="--", label=f"chosen {test.learning_rate:.3g}")
    finite = [v for v in test.smoothed if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 3 * test.smoothed[0]) * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("Learning-rate range test")
    ax.legend()
    fig.tight_layout()
    mlflow.log_figure(fig, "train/lr_range_test.png")
    plt.close(fig)
    rows = ["learning_rate,loss,smoothed_loss"]
    rows += [
        f"{r:.6g},{v:.6g},{s:.6g}" for r, v, s in zip(test.learning_rates, test.losses, test.smoothed, strict=True)
    ]
    mlflow.log_text("\n".join(rows) + "\n", "train/lr_range_test.csv")
    mlflow.log_metric("lr_range_test_seconds", round(test.seconds, 2))
