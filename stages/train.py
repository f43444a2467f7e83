"""Stage train: augmented training arrays + validation split -> models/model.keras, tracked in MLflow.

Killed mid-way (even by SIGKILL), the stage resumes from its last finished epoch when
started again with the same params and data (see imgclf.training).
"""

import logging
import sys

import keras
import mlflow
import numpy as np

from imgclf import tracking, training
from imgclf.io import atomic_path, describe, load_params, run_stage, write_csv, write_json
from imgclf.models import build_model
from imgclf.paths import layout
from imgclf.plan import TrainingPlan, plan_training

log = logging.getLogger("imgclf.train")


def log_plan(plan: TrainingPlan) -> None:
    """The automatic choices in a few lines, so a user sees what was decided and why."""
    log.info(
        "plan: batch %d, %d steps per epoch, %d epochs, %d steps in all, warmup %d steps, early stopping %s",
        plan.batch_size,
        plan.steps_per_epoch,
        plan.epochs,
        plan.total_steps,
        plan.warmup_steps,
        f"patience {plan.early_stopping_patience}" if plan.early_stopping_patience else "off",
    )
    for key, reason in plan.reasons.items():
        log.info("plan: %s = %s", key, reason)
    for warning in plan.warnings:
        log.warning("%s", warning)


def main() -> None:
    params, all_params = load_params("train"), load_params()
    paths = layout()
    keras.utils.set_random_seed(int(params["seed"]))
    data = training.load_train_data(paths, bool(params.get("use_augmented", True)))
    log.info("training on %d images (%s), validating on %d", len(data.x_train), data.x_train.shape[1:], len(data.x_val))
    plan = plan_training(params, len(data.x_train), data.y_val, len(data.class_names))
    log_plan(plan)
    precision = training.set_precision(params.get("mixed_precision", "auto"))
    strategy = training.distribution_strategy()
    chief = training.is_chief()

    data_hash = training.data_hash(data)
    run_dir = paths.train_backup / training.backup_key(params, data_hash)
    training.clear_backup(paths.train_backup, keep=run_dir.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    history_tmp = run_dir / "history.csv"

    with strategy.scope():
        model = build_model(params["model"], data.x_train.shape[1:], len(data.class_names), params)
        lr = training.learning_rate(params, training.first_phase_steps(params, plan))
        training.compile_model(model, params, lr)
    setup = training.describe_setup(strategy, precision)
    log.info("model %s: %d parameters; %s", model.name, model.count_params(), setup)

    experiment_id = tracking.configure(paths.root, params.get("experiment_name", "imgclf"))
    run_id_file = run_dir / "mlflow_run_id"
    run_id = run_id_file.read_text().strip() if run_id_file.exists() else None
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, log_system_metrics=False) as run:
        run_id_file.write_text(run.info.run_id)
        if run_id is None:
            mlflow.log_params(tracking.flatten(all_params) | plan.mlflow_params())
            mlflow.set_tags(tracking.run_tags(paths.root, data_hash, params["model"]))
        else:
            log.info("continuing MLflow run %s", run.info.run_id)
        mlflow.set_tag("training_setup", setup)  # also when resumed: it may resume on other devices
        extra = [tracking.EpochMetrics(log_setup=run_id is None)] if chief else []
        epochs = training.fit(model, data, params, plan, run_dir, history_tmp, extra)
        if not chief:
            return

        history = training.read_history(history_tmp)
        write_csv(paths.history, history)
        write_json(paths.train_plan, plan.as_dict())
        mlflow.log_artifact(str(paths.train_plan), "train")
        with atomic_path(paths.model) as tmp:
            model.save(tmp)
        info = tracking.log_keras_model(model, np.asarray(data.x_val[:4]), params.get("registered_model_name"))
        registered = (
            {"name": params["registered_model_name"], "version": info.registered_model_version}
            if params.get("registered_model_name")
            else None
        )
        mlflow.log_artifact(str(paths.history), "train")
        mlflow.set_tag("resumed_from_epoch", str(epochs.first_epoch or 0))
        tracking.write_run_info(paths, mlflow.get_run(run.info.run_id), registered)
    training.clear_backup(paths.train_backup)  # finished: nothing left to resume
    log.info("epochs run: %d, best val_loss %.4f", len(history), history["val_loss"].min())
    for path in (paths.model, paths.history, paths.train_plan, paths.run_info):
        log.info("wrote %s", describe(path))


if __name__ == "__main__":
    sys.exit(run_stage("train", main))
