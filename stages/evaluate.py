"""Stage evaluate: the trained model on the test split, beside a baseline -> reports/eval/, MLflow, and the
headline DVC compares (reports/metrics.json: a dozen numbers; every other figure is in reports/eval/metrics.json)."""

import logging

import mlflow
import numpy as np
import pandas as pd

from imgclf.data.shards import read_split
from imgclf.evaluate import baseline, figures
from imgclf.evaluate.metrics import classification_metrics, evaluation_summary, headline, reliability_points, roc_points
from imgclf.io import PipelineError, read_json, write_csv, write_json, write_text
from imgclf.stage import run_stage
from imgclf.team import tracking
from imgclf.train.models import load_trained

log = logging.getLogger(__name__)


def main(params, paths):
    tracking.check_store(paths.root)  # a tracking server that is down fails here, before any write
    model = load_trained(paths)
    x, y = read_split(paths, "test", empty="nothing to evaluate")
    class_names = read_json(paths.preprocessed_meta)["class_names"]
    proba = model.predict(x, batch_size=int(params["batch_size"]), verbose=0)
    log.info("predicted %d test images", len(x))

    metrics = classification_metrics(y, proba, class_names, top_k=int(params["top_k"]))
    predicted = proba.argmax(axis=1)
    fit_parts = [read_split(paths, split, lazy=True) for split in ("train", "val")]
    versus = baseline.evaluate(fit_parts, x, y, predicted, class_names, params["baseline"])
    verdict = baseline.ship_verdict(metrics, versus, params["baseline"])
    plan = read_json(paths.train_plan) if paths.train_plan.exists() else None
    validation = read_json(paths.validation_report) if paths.validation_report.exists() else None
    history = pd.read_csv(paths.history) if paths.history.exists() else None
    epochs_run = None if history is None else len(history)
    write_json(paths.eval_detail, {"test": metrics, "baseline": versus})
    write_json(paths.metrics, headline(metrics, versus, verdict, validation, plan, epochs_run))
    write_json(paths.eval_verdict, verdict)  # export copies it into the model card; promote, predict, serve honour it
    write_text(paths.eval_summary, evaluation_summary(metrics, versus, plan, verdict))
    names = np.asarray(class_names)
    write_csv(paths.predictions, pd.DataFrame({"actual": names[y], "predicted": names[predicted]}))
    write_csv(paths.roc_points, pd.DataFrame(roc_points(y, proba)))  # dvc plots: roc, calibration
    # train's outputs live in DVC's cache (its run cache needs that); their copies here are in git, so
    # `dvc plots diff <rev>` and `git log -p` need no `dvc pull`
    if history is not None:
        write_text(paths.eval_history, paths.history.read_text())
    write_json(paths.eval_training, {"run": read_json(paths.run_info), "plan": plan})
    write_csv(paths.reliability_points, pd.DataFrame(reliability_points(y, proba)))

    out = paths.eval_reports
    figures.confusion_matrix(y, predicted, class_names, out / "confusion_matrix.png")
    figures.per_class_bars(metrics["per_class"], out / "per_class.png")
    figures.roc_curves(y, proba, class_names, out / "roc.png")
    figures.confident_mistakes(x, y, proba, class_names, out / "mistakes.png", int(params["mistakes"]))
    rng = np.random.default_rng(int(params["seed"]))
    picks = np.sort(rng.choice(len(x), size=min(int(params["grad_cam_samples"]), len(x)), replace=False))
    if len(picks):
        figures.grad_cam_grid(model, x[picks], y[picks], class_names, out / "grad_cam.png")

    with tracking.training_run(paths):
        tracking.log_splits(paths, {"test": (x, y, "testing")})
        scalars = {f"test_{k}": v for k, v in metrics.items() if isinstance(v, int | float) and v is not None}
        mlflow.log_metrics(scalars)
        mlflow.log_metrics({f"baseline_{k}": versus[k] for k in ("accuracy", "macro_f1", "network_minus_baseline")})
        mlflow.set_tag("network_below_baseline", str(versus["network_below_baseline"]).lower())
        mlflow.set_tags({"fit_to_ship": str(verdict["fit_to_ship"]).lower(), "ship_verdict": verdict["reason"]})
        mlflow.log_artifacts(str(out), "eval")  # the detail (eval/metrics.json), the figures, the plot data
    log.info(
        "test accuracy %.4f, macro F1 %.4f on %d images; baseline (%s) %.4f",
        metrics["accuracy"],
        metrics["macro_f1"],
        metrics["samples"],
        versus["model"],
        versus["accuracy"],
    )
    message, fail = baseline.verdict(metrics, versus, params["baseline"])
    if fail:
        raise PipelineError(f"{message}; evaluate.baseline.fail_below is true")
    if message:
        log.warning("%s", message)
    if not verdict["fit_to_ship"]:
        log.error("NOT FIT TO SHIP: %s. Promote, predict and the service will refuse this model", verdict["reason"])
    return [paths.metrics, paths.eval_detail, paths.eval_verdict, paths.eval_training, paths.predictions,
            paths.eval_summary, paths.roc_points, paths.reliability_points, *sorted(out.glob("*.png"))]  # fmt: skip


if __name__ == "__main__":
    run_stage("evaluate", main)
