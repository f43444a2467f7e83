"""Stage evaluate: the trained model on the test split -> reports/metrics.json, reports/eval/, MLflow."""

import logging
import sys

import keras
import mlflow
import numpy as np
import pandas as pd

from imgclf import baseline, figures, tracking
from imgclf.io import (
    PipelineError,
    describe,
    load_params,
    read_json,
    read_npy,
    run_stage,
    write_csv,
    write_json,
    write_text,
)
from imgclf.metrics import classification_metrics, evaluation_summary
from imgclf.paths import layout

log = logging.getLogger("imgclf.evaluate")


def main() -> None:
    params = load_params("evaluate")
    paths = layout()
    if not paths.model.exists():
        raise PipelineError(f"{paths.model} not found: run the train stage first")
    model = keras.models.load_model(paths.model, compile=False)
    x, y = read_npy(paths.preprocessed_x("test"), mmap=False), read_npy(paths.preprocessed_y("test"))
    if len(x) == 0:
        raise PipelineError("the test split is empty: nothing to evaluate")
    class_names = read_json(paths.preprocessed_meta)["class_names"]
    proba = model.predict(x, batch_size=int(params.get("batch_size", 512)), verbose=0)
    log.info("predicted %d test images", len(x))

    metrics = classification_metrics(y, proba, class_names, top_k=int(params.get("top_k", 3)))
    predicted = proba.argmax(axis=1)
    fit_parts = [(read_npy(paths.preprocessed_x(s)), read_npy(paths.preprocessed_y(s))) for s in ("train", "val")]
    versus = baseline.evaluate(fit_parts, x, y, predicted, class_names, params["baseline"])
    write_json(paths.metrics, {"test": metrics, "baseline": versus})
    plan = read_json(paths.train_plan) if paths.train_plan.exists() else None
    write_text(paths.eval_summary, evaluation_summary(metrics, versus, plan))
    names = np.asarray(class_names)
    write_csv(paths.predictions, pd.DataFrame({"actual": names[y], "predicted": names[predicted]}))

    out = paths.eval_reports
    figures.confusion_matrix(y, predicted, class_names, out / "confusion_matrix.png")
    figures.per_class_bars(metrics["per_class"], out / "per_class.png")
    figures.roc_curves(y, proba, class_names, out / "roc.png")
    figures.confident_mistakes(x, y, proba, class_names, out / "mistakes.png", int(params.get("mistakes", 16)))
    rng = np.random.default_rng(int(params.get("seed", 42)))
    picks = np.sort(rng.choice(len(x), size=min(int(params.get("grad_cam_samples", 8)), len(x)), replace=False))
    if len(picks):
        figures.grad_cam_grid(model, x[picks], y[picks], class_names, out / "grad_cam.png")

    with tracking.training_run(paths):
        scalars = {f"test_{k}": v for k, v in metrics.items() if isinstance(v, int | float) and v is not None}
        mlflow.log_metrics(scalars)
        mlflow.log_metrics({f"baseline_{k}": versus[k] for k in ("accuracy", "macro_f1", "network_minus_baseline")})
        mlflow.set_tag("network_below_baseline", str(versus["network_below_baseline"]).lower())
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
    for path in (paths.metrics, paths.predictions, paths.eval_summary, *sorted(out.glob("*.png"))):
        log.info("wrote %s", describe(path))
    message, fail = baseline.verdict(metrics, versus, params["baseline"])
    if fail:
        raise PipelineError(f"{message}; evaluate.baseline.fail_below is true")
    if message:
        log.warning("%s", message)


if __name__ == "__main__":
    sys.exit(run_stage("evaluate", main))
