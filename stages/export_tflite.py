"""Stage export-tflite: the Keras model -> verified .tflite variants and ONNX, labels.txt, reports/export.json.

Each variant's accuracy gate is a verdict, not an exit status (``export.on_gate_failure: record``):
a variant that lost accuracy beyond noise is written, marked ``blessed: false`` with why in
reports/export.json and the model card, and the stage finishes, so the experiment keeps its
metrics. Promote, predict and the service honour the blessing. ``on_gate_failure: fail`` makes
the stage fail instead (a CI pipeline that wants ``dvc repro`` to exit non-zero).
"""

import logging

import mlflow
import numpy as np

from imgclf.data.shards import read_split
from imgclf.io import PipelineError, read_json, write_json, write_text
from imgclf.params import load_section
from imgclf.ship import export
from imgclf.stage import run_stage
from imgclf.team import tracking
from imgclf.train.models import load_trained

log = logging.getLogger(__name__)


def fit_unknown_detectors(files, x_test, params, kernel_bias, paths, report) -> dict:
    """Each variant's out-of-distribution detector (fitted on training images, its threshold on the
    validation split), saved beside the model card; the card's summary of them."""
    x_train, y_train = read_split(paths, "train", lazy=True)
    picks = np.random.default_rng(int(params["seed"])).permutation(len(y_train))[: int(params["max_fit_images"])]
    train = (np.asarray(x_train[np.sort(picks)]), y_train[np.sort(picks)])
    val = read_split(paths, "val")
    if len(val[1]) < int(params["min_images"]):
        log.warning(
            "unknown detector: %d validation images < export.unknown.min_images (%d): its threshold comes from "
            "out-of-fold scores on train + val, less exact than a held-out split",
            len(val[1]), params["min_images"],
        )  # fmt: skip
    summary = {"detector": params["detector"], "unknown_rate": params["unknown_rate"], "fitted_images": len(picks),
               "threshold_images": len(val[1]), "variants": {}}  # fmt: skip
    for variant, path in files.items():
        detector, result = export.fit_unknown_detector(path, train, val, x_test, params, kernel_bias)
        detector.save(paths.unknown_detector(variant))
        summary["variants"][variant] = {"file": paths.unknown_detector(variant).name, **result}
        report["variants"][variant]["unknown"] = result
        log.info(
            "%s: unknown detector %s, threshold %.4g (%s), test images called unknown %.1f %%",
            variant, detector.name, detector.threshold, result["threshold_from"],
            100 * (result["test_unknown_rate"] or 0),
        )  # fmt: skip
    return summary


def main(params, paths):
    tracking.check_store(paths.root)  # a tracking server that is down fails here, before any write
    model = load_trained(paths)
    meta = read_json(paths.preprocessed_meta)
    x_test, y_test = read_split(paths, "test", empty="nothing to verify the exported models on")
    calibration = export.calibration_sample(
        read_split(paths, "train", lazy=True)[0], int(params["calibration_samples"]), int(params["seed"])
    )
    paths.onnx_model.parent.mkdir(parents=True, exist_ok=True)  # a DVC out, also when onnx is not exported
    float32 = export.float32_copy(model)
    files = export.export_all(export.with_features(float32), list(params["variants"]), calibration, paths)

    keras_pred = model.predict(x_test, batch_size=512, verbose=0).argmax(axis=1)  # as trained, any precision
    report = {
        "keras_accuracy": round(float((keras_pred == y_test).mean()), 6),
        "keras_precision": export.keras_precision(model),
        "test_samples": len(y_test),
        "variants": {},
    }
    for variant, path in files.items():
        result = export.verify(path, x_test, y_test, keras_pred, int(params["latency_runs"]))
        report["variants"][variant] = result
        log.info(
            "%s: accuracy %.4f (drop %.4f, 95%% CI %.4f..%.4f, p %.2g), agreement %.4f, %d bytes, %.3f ms",
            variant,
            result["accuracy"],
            result["accuracy_drop"],
            *result["drop_ci95"],
            result["drop_p_value"],
            result["agreement"],
            result["size_bytes"],
            result["latency_ms_p50"],
        )

    report, notes = export.bless(report, float(params["max_accuracy_drop"]), float(params["significance"]))
    unknown = fit_unknown_detectors(files, x_test, params["unknown"], export.last_layer(float32), paths, report)
    unblessed = {name: v["verdict"] for name, v in report["variants"].items() if not v["blessed"]}
    write_text(paths.labels, "".join(f"{name}\n" for name in meta["class_names"]))
    verdict = read_json(paths.eval_verdict) if paths.eval_verdict.exists() else None
    write_json(paths.tflite_meta, export.model_card(meta, files, paths.tflite, verdict, unblessed, unknown))
    write_json(paths.export_report, report)
    shipped = export.shipped_headline(report, load_section("serve")["variant"])  # what the service ships
    write_json(paths.shipped_metrics, shipped)
    with tracking.training_run(paths):
        mlflow.log_artifacts(str(paths.tflite), "tflite")
        if paths.onnx_model.exists():
            mlflow.log_artifact(str(paths.onnx_model), "onnx")
        mlflow.log_artifact(str(paths.labels), "tflite")
        mlflow.log_artifact(str(paths.export_report), "tflite")
        for variant, result in report["variants"].items():
            numbers = {k: v for k, v in result.items() if isinstance(v, int | float)}  # blessed: 1 or 0
            mlflow.log_metrics({f"tflite_{variant}_{k}": float(v) for k, v in numbers.items()})
        mlflow.set_tag("shipped_variant_blessed", str(bool(shipped["shipped_blessed"])).lower())
    for note in notes:
        log.warning("%s", note)
    if unblessed:
        failures = "; ".join(f"{name} {reason.removeprefix('not blessed: ')}" for name, reason in unblessed.items())
        if params["on_gate_failure"] == "fail":
            raise PipelineError(f"{len(unblessed)} variant(s) lost too much accuracy: {failures}")
        log.error(
            "NOT BLESSED: %d variant(s) lost too much accuracy (recorded in %s and the model card; promote, predict "
            "and the service will not use them; export.on_gate_failure: fail fails the stage): %s",
            len(unblessed),
            paths.export_report.relative_to(paths.root),
            failures,
        )
    detectors = [paths.unknown_detector(variant) for variant in files]
    return [*files.values(), *detectors, paths.labels, paths.export_report, paths.shipped_metrics]


if __name__ == "__main__":
    run_stage("export-tflite", main)
