"""Stage train: augmented training arrays + validation split -> models/model.keras, tracked in MLflow.

Killed mid-way (even by SIGKILL), the stage resumes from its last finished epoch when
started again with the same params and data (see imgclf.train.training).

With ``TF_CONFIG`` set (``python -m imgclf.launch --workers 2``, or a cluster) every worker runs
this stage; the chief (worker 0, or the ``chief`` task) alone writes the model, the history and
the MLflow run, the others train in step with it and write only to a temporary folder.
"""

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np

from imgclf.io import atomic_path, write_csv, write_json
from imgclf.params import read_file
from imgclf.stage import run_stage
from imgclf.team import tracking
from imgclf.train import distributed, training
from imgclf.train.models import build_model
from imgclf.train.plan import TrainingPlan, plan_training

log = logging.getLogger(__name__)


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
    for key, reason in plan.reasons.items():  # learning_rate: resolved later, logged then
        log.info("plan: %s = %s", key, reason)
    for warning in plan.warnings:
        log.warning("%s", warning)


def main(params, paths):
    tracking.check_store(paths.root)  # a tracking server that is down fails here, before any write
    training.seed_everything(int(params["seed"]))
    data = training.load_train_data(paths, params["use_augmented"])
    log.info("training on %d images (%s), validating on %d", len(data.x_train), data.x_train.shape[1:], len(data.x_val))
    plan = plan_training(params, len(data.x_train), data.y_val, len(data.class_names))
    log_plan(plan)
    precision = training.set_precision(params["mixed_precision"])
    strategy = training.distribution_strategy()
    chief = training.is_chief()

    data_hash = training.data_hash(data)
    if chief:
        run_dir = paths.train_backup / training.backup_key(params, data_hash)
        training.clear_backup(paths.train_backup, keep=run_dir.name)
        run_dir.mkdir(parents=True, exist_ok=True)
    else:  # another worker of a multi-worker training: its backups and epoch log go to a folder of its own
        run_dir = Path(tempfile.mkdtemp(prefix="imgclf-train-worker-"))
    epoch_log = run_dir / "history.csv"  # grows epoch by epoch; reports/train/history.csv once finished

    with strategy.scope():
        model = build_model(params["model"], data.x_train.shape[1:], len(data.class_names), params)
    # learning_rate: auto is a range test on a copy of this model (kept in run_dir for a resumed training)
    plan, range_test = training.resolve_learning_rate(model, data, params, plan, run_dir / "learning_rate.json")
    training.compile_for_plan(model, params, plan)
    setup = training.describe_setup(strategy, precision)
    log.info("model %s: %d parameters; %s", model.name, model.count_params(), setup)

    if not chief:  # it trains in step with the chief, which alone writes outputs and logs to MLflow
        try:
            training.fit_guarded(model, data, params, plan, run_dir, epoch_log, saved=run_dir / "learning_rate.json")
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        return []

    name = tracking.run_name(paths.root, params["model"], plan.learning_rate, plan.batch_size)
    with tracking.resumable_run(run_dir, paths.root, params["experiment_name"], name) as (run, resumed):
        if not resumed:
            mlflow.log_params(tracking.flatten(read_file()) | plan.mlflow_params())
            mlflow.set_tags(tracking.run_tags(paths.root, data_hash, params["model"]))
            tracking.log_splits(
                paths,
                {"train": (data.x_train, data.y_train, "training"), "val": (data.x_val, data.y_val, "validation")},
            )
        mlflow.set_tag("training_setup", setup)  # also when resumed: it may resume on other devices
        if range_test is not None:
            tracking.log_range_test(range_test)
        extra = [tracking.EpochMetrics(log_setup=not resumed)]
        epoch_logger, plan = training.fit_guarded(
            model, data, params, plan, run_dir, epoch_log, extra, saved=run_dir / "learning_rate.json"
        )
        history = training.read_history(epoch_log)
        underfit = training.underfit_warning(history, params, plan)
        if underfit:
            log.warning("%s", underfit)
            plan = replace(plan, warnings=[*plan.warnings, underfit])
        mlflow.log_metric("learning_rate_peak", plan.learning_rate)
        mlflow.set_tag("stall_restarts", str(len(plan.restarts)))
        write_csv(paths.history, history)
        write_json(paths.train_plan, plan.as_dict())
        mlflow.log_artifact(str(paths.train_plan), "train")
        with atomic_path(paths.model) as tmp:
            model.save(tmp)
        if distributed.is_multi_worker(strategy):
            model = distributed.outside_strategy(paths.model)
        info = tracking.log_keras_model(model, np.asarray(data.x_val[:4]), params["registered_model_name"])
        registered = (
            {"name": params["registered_model_name"], "version": info.registered_model_version}
            if params["registered_model_name"]
            else None
        )
        mlflow.log_artifact(str(paths.history), "train")
        mlflow.set_tag("resumed_from_epoch", str(epoch_logger.first_epoch or 0))
        tracking.write_run_info(paths, mlflow.get_run(run.info.run_id), registered)
    training.clear_backup(paths.train_backup)  # finished: nothing left to resume
    log.info("epochs run: %d, best val_loss %.4f", len(history), history["val_loss"].min())
    return [paths.model, paths.history, paths.train_plan, paths.run_info]


if __name__ == "__main__":
    run_stage("train", main)
