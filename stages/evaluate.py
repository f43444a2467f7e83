"""Stage evaluate: the trained model on the test split, beside a baseline -> reports/metrics.json, reports/eval/, MLflow."""

import logging

import mlflow
import numpy as np
import pandas as pd

from imgclf import baseline, figures, tracking
from imgclf.io import PipelineError, read_json, write_csv, write_json, write_text
from imgclf.metrics import classification_metrics, evaluation_summary
from imgclf.models import load_trained
from imgclf.shards import read_split
from imgclf.stage import run_stage

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
    write_json(paths.metrics, {"test": metrics, "baseline": versus})
    verdict = baseline.ship_verdict(metrics, versus, params["baseline"])
    write_json(paths.eval_verdict, verdict)  # export copies it into the model card; promote, predict, serve honour it
    plan = read_json(paths.train_plan) if paths.train_plan.exists() else None
    write_text(paths.eval_summary, evaluation_summary(metrics, versus, plan, verdict))
    names = np.asarray(class_names)
    write_csv(paths.predictions, pd.DataFrame({"actual": names[y], "predicted": names[predicted]}))

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
        mlflow.log_artifact(str(paths.metrics), "eval")
        mlflow.log_artifacts(str(out), "eval")
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
    return [paths.metrics, paths.eval_verdict, paths.predictions, paths.eval_summary, *sorted(out.glob("*.png"))]


if __name__ == "__main__":
    run_stage("evaluate", main)
