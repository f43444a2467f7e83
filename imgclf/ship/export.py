"""export-tflite: convert the Keras model to .tflite variants (and ONNX) and verify each one with its runtime.

Conversion goes through a SavedModel (``model.export(..., format="tf_saved_model")``
then ``tf.lite.TFLiteConverter.from_saved_model``) with built-in TFLite ops only, so
the files run on a phone's LiteRT runtime. Verification runs the .tflite files
themselves with ``ai_edge_litert``'s interpreter, never the Keras model. The ``onnx`` variant is
Keras' own ``model.export(..., format="onnx")`` (tf2onnx underneath), verified with onnxruntime.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from imgclf.io import PipelineError, atomic_path, write_bytes
from imgclf.paths import Layout
from imgclf.ship import ood
from imgclf.ship.runtime import TFLiteClassifier, load_classifier  # noqa: F401 (TFLiteClassifier: the stages' and tests' name)

log = logging.getLogger(__name__)
TFLITE_VARIANTS = ("float32", "float16", "dynamic", "int8")
VARIANTS = (*TFLITE_VARIANTS, "onnx")


def calibration_sample(x: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A seeded random subset of training images for int8 calibration."""
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(x), size=min(count, len(x)), replace=False))
    return np.asarray(x[picks])


def convert(saved_model_dir: Path, variant: str, calibration: np.ndarray | None = None) -> bytes:
    """One variant's .tflite bytes. int8 is full-integer: uint8 in, uint8 probabilities out."""
    import tensorflow as tf

    if variant not in TFLITE_VARIANTS:
        raise PipelineError(
            f"export.variants: unknown .tflite variant {variant!r}; known: {', '.join(TFLITE_VARIANTS)}"
        )
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex / SELECT_TF_OPS
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        if calibration is None or not len(calibration):
            raise PipelineError("int8 export needs calibration images (export.calibration_samples > 0)")

        def representative() -> Iterator[list[np.ndarray]]:
            for image in calibration:
                yield [image[None].astype(np.uint8)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    try:
        return converter.convert()
    except Exception as error:  # the converter raises ConverterError and plain exceptions
        raise PipelineError(f"TFLite conversion of the {variant} variant failed: {error}".splitlines()[0]) from error


def _layers(model) -> list:
    """The model's layers, nested models' layers included."""
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        found.extend(_layers(layer))
    return found


def keras_precision(model) -> str:
    """The mixed-precision policy a model was built under ("mixed_float16", "mixed_bfloat16"), else "float32"."""
    for layer in _layers(model):
        if layer.dtype_policy.name.startswith("mixed_"):
            return layer.dtype_policy.name
    return "float32"


def float32_copy(model):
    """The same network and weights with every layer in float32; ``model`` itself when it already is.

    A model trained under mixed precision (``train.mixed_precision``: mixed_float16 on a GPU,
    mixed_bfloat16) computes in half precision, and its SavedModel carries float16/bfloat16 ops that
    the TFLite converter cannot lower to built-in ops ("'tf.Mul' op is neither a custom op nor a
    flex op"). Its variables are float32 all along, so rebuilding the architecture from its config
    with every mixed policy set to float32 and copying the weights over gives the float32 graph
    that TFLite expects, with the trained weights unchanged (the float16 variant still halves them).
    """
    if keras_precision(model) == "float32":
        return model

    def is_mixed(policy) -> bool:
        if isinstance(policy, dict) and policy.get("class_name") == "DTypePolicy":
            policy = policy.get("config", {}).get("name")
        return isinstance(policy, str) and policy.startswith("mixed_")

    def to_float32(node):
        """The config with each layer's mixed ``dtype`` (a serialized DTypePolicy or its name) set to float32."""
        if isinstance(node, dict):
            return {key: "float32" if key == "dtype" and is_mixed(v) else to_float32(v) for key, v in node.items()}
        if isinstance(node, list):
            return [to_float32(value) for value in node]
        return node

    copy = type(model).from_config(to_float32(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def with_features(model):
    """The network with two named outputs, ``probabilities`` and ``features`` (what its last layer
    sees): the exported files carry both, so the out-of-distribution detector runs wherever the model
    runs (:mod:`imgclf.ship.ood`); the probabilities are unchanged."""
    import keras

    from imgclf.ship.runtime import FEATURES, PROBABILITIES

    return keras.Model(model.inputs, {PROBABILITIES: model.outputs[0], FEATURES: model.layers[-1].input})


def last_layer(model) -> tuple[np.ndarray, np.ndarray]:
    """The kernel and bias of the network's last Dense layer: the energy detector's logits."""
    kernel, bias = model.layers[-1].get_weights()[:2]
    return np.asarray(kernel, np.float32), np.asarray(bias, np.float32)


def fit_unknown_detector(
    path: Path,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    x_test: np.ndarray,
    params: dict,
    kernel_bias: tuple[np.ndarray, np.ndarray],
) -> tuple[ood.Detector, dict]:
    """The variant's detector, computed from its own outputs: fitted on the training images, its
    threshold set on the validation images (out of fold on both when validation has fewer than
    ``min_images``), and the share of the test split it calls unknown (the in-distribution rate)."""
    classifier = load_classifier(path)
    options = {"last_layer": kernel_bias, "knn_k": int(params["knn_k"]), "knn_reference": int(params["knn_reference"])}
    rate, seed = float(params["unknown_rate"]), int(params["seed"])
    p_train, f_train = classifier.predict_with_features(train[0])
    p_val, f_val = classifier.predict_with_features(val[0])
    if len(val[1]) >= int(params["min_images"]):
        detector = ood.fit(params["detector"], p_train, f_train, train[1], seed=seed, **options)
        detector = ood.calibrate(detector, p_val, f_val, rate)
        threshold_from = "val"
    else:  # too few for a quantile: every image of train + val scored by a detector fitted without it
        features = None if f_train is None else np.concatenate([f_train, f_val])
        detector, _ = ood.fit_with_threshold(
            params["detector"], np.concatenate([p_train, p_val]), features, np.concatenate([train[1], val[1]]),
            rate, folds=int(params["folds"]), seed=seed, **options,
        )  # fmt: skip
        threshold_from = "train+val out of fold"
    p_test, f_test = classifier.predict_with_features(x_test)
    test_unknown = detector.unknown(detector.score(p_test, f_test))
    return detector, {
        "detector": detector.name,
        "threshold": round(detector.threshold, 6),
        "threshold_from": threshold_from,
        "test_unknown_rate": round(float(test_unknown.mean()), 6) if len(test_unknown) else None,
        **reference_statistics(p_test),
    }


PROBABILITY_BINS = 20


def reference_statistics(probabilities: np.ndarray) -> dict:
    """What the test split's answers looked like, for the monitor to compare production with: how often
    each class was answered, and a histogram of the top probability (``PROBABILITY_BINS`` bins on 0..1)."""
    answered = np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1]) if len(probabilities) else []
    top = probabilities.max(axis=1) if len(probabilities) else np.zeros(0)
    histogram = np.histogram(top, bins=PROBABILITY_BINS, range=(0.0, 1.0))[0]
    return {"test_answers": [int(c) for c in answered], "test_probability_histogram": [int(c) for c in histogram]}


def export_onnx(model, path: Path) -> None:
    """The model as ONNX with its uint8 input kept (Keras' exporter; it needs a model that has run once)."""
    shape = [1, *model.inputs[0].shape[1:]]
    model(np.zeros(shape, dtype=model.inputs[0].dtype))
    with atomic_path(path) as tmp:
        model.export(str(tmp), format="onnx", verbose=False)


def export_all(model, variants: list[str], calibration: np.ndarray, paths: Layout) -> dict[str, Path]:
    """Write each variant to ``paths.exported_model(variant)``."""
    files = {}
    with tempfile.TemporaryDirectory(prefix="imgclf-savedmodel-") as tmp:
        saved_model = Path(tmp) / "saved_model"
        if set(variants) & set(TFLITE_VARIANTS):
            model.export(str(saved_model), format="tf_saved_model", verbose=False)
        for variant in variants:
            start = time.perf_counter()
            path = paths.exported_model(variant)
            if variant == "onnx":
                export_onnx(model, path)
            else:
                write_bytes(path, convert(saved_model, variant, calibration))
            files[variant] = path
            log.info("%s: %s in %.1f s", variant, path.name, time.perf_counter() - start)
    return files


def verify(path: Path, x_test: np.ndarray, y_test: np.ndarray, keras_pred: np.ndarray, latency_runs: int) -> dict:
    """Accuracy of the .tflite file itself, agreement with Keras' predictions, size and batch-1 latency,
    and the accuracy drop against Keras with its uncertainty (see :func:`imgclf.evaluate.metrics.paired_comparison`)."""
    from imgclf.evaluate.metrics import paired_comparison  # lazily: predict and serving need no scikit-learn

    classifier = load_classifier(path)
    predicted = classifier.predict(x_test).argmax(axis=1)
    drop = paired_comparison(y_test, keras_pred, predicted)
    return {
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "accuracy": round(float((predicted == y_test).mean()), 6),
        "agreement": round(float((predicted == keras_pred).mean()), 6),
        "latency_ms_p50": round(classifier.latency_ms(x_test, runs=latency_runs), 4),
        "accuracy_drop": drop["accuracy_drop"],
        "drop_ci95": drop["drop_ci95"],
        "drop_p_value": drop["p_value"],
        "images_lost": drop["lost"],
        "images_gained": drop["gained"],
    }


def accuracy_gate(report: dict, max_drop: float, alpha: float) -> tuple[list[str], list[str]]:
    """(failures, notes): variants whose accuracy falls more than ``max_drop`` below the Keras model's
    beyond noise, and variants whose drop is that large but which the test set is too small to judge.

    On 27 test images one disagreement is 3.7 points, and McNemar's p = 0.5 says it is noise; on
    10,000, 80 images lost and 20 gained (0.6 points) come with p far below ``alpha``. Both
    conditions must hold to fail; a large drop that is not significant is passed with a note.
    """
    failures, notes = [], []
    for name, (reason, note) in _variant_verdicts(report, max_drop, alpha).items():
        if reason:
            failures.append(f"{name} {reason}")
        if note:
            notes.append(f"{name} {note}")
    return failures, notes


def _variant_verdicts(report: dict, max_drop: float, alpha: float) -> dict[str, tuple[str | None, str | None]]:
    """Per variant: (why it fails the gate or None, a note for a drop too noisy to judge or None)."""
    from imgclf.evaluate.metrics import is_significant_drop

    verdicts = {}
    for name, v in report["variants"].items():
        low, high = v["drop_ci95"]
        described = (
            f"accuracy {v['accuracy']:.4f} is {v['accuracy_drop']:.4f} below Keras' "
            f"{report['keras_accuracy']:.4f} on {report['test_samples']} images ({v['images_lost']} lost, "
            f"{v['images_gained']} gained; 95% CI {low:.4f}..{high:.4f}, McNemar p {v['drop_p_value']:.2g}"
        )
        comparison = {"accuracy_drop": v["accuracy_drop"], "p_value": v["drop_p_value"]}
        if is_significant_drop(comparison, max_drop, alpha):
            verdicts[name] = (f"{described}; export.max_accuracy_drop {max_drop}, export.significance {alpha})", None)
        elif v["accuracy_drop"] > max_drop + 1e-12:
            verdicts[name] = (None, f"{described}): passed, the test set is too small to tell this drop from noise")
        else:
            verdicts[name] = (None, None)
    return verdicts


def bless(report: dict, max_drop: float, alpha: float) -> tuple[dict, list[str]]:
    """The report with each variant's verdict (``blessed`` true or false, and ``verdict``: why), and the
    notes for drops too noisy to judge.

    A gate that fails the stage erases the run: DVC keeps no metrics of a failed stage, so the
    experiment cannot even be compared. As TFX's Evaluator blesses a model and its Pusher honours
    the blessing, export records each variant's verdict and finishes; promote, predict and the
    service honour it (``export.on_gate_failure: fail`` restores a failing stage)."""
    verdicts = _variant_verdicts(report, max_drop, alpha)
    variants = {}
    for name, result in report["variants"].items():
        reason, note = verdicts[name]
        variants[name] = result | {
            "blessed": reason is None,
            "verdict": f"not blessed: {reason}" if reason else f"blessed: {note or 'no accuracy lost beyond noise'}",
        }
    notes = [f"{name} {note}" for name, (_, note) in verdicts.items() if note]
    return report | {"variants": variants}, notes


def shipped_headline(report: dict, variant: str) -> dict:
    """``reports/shipped.json``, a DVC metric: the numbers of the variant the service ships
    (``serve.variant``), ``shipped_blessed`` 1 or 0 (0 alone when it was not exported)."""
    v = report["variants"].get(variant)
    if v is None:
        return {"shipped_blessed": 0}
    return {
        "shipped_accuracy": v["accuracy"],
        "shipped_size_kb": round(v["size_bytes"] / 1024, 1),
        "shipped_latency_ms": v["latency_ms_p50"],
        "shipped_blessed": int(bool(v["blessed"])),
    }


def model_card(
    preprocess_meta: dict,
    files: dict[str, Path],
    card_folder: Path,
    verdict: dict | None = None,
    unblessed: dict[str, str] | None = None,
    unknown: dict | None = None,
) -> dict:
    """The label list and input contract, written beside the .tflite files for apps, ``predict`` and the
    service; ``variants`` gives each file relative to the card (``model_int8.tflite``, ``../onnx/model.onnx``);
    ``verdict``: evaluate's (is the model fit to ship), which travels with the files into the registry;
    ``unblessed``: the variants export's accuracy gate did not bless, with why; ``unknown``: the
    out-of-distribution detector, how it was fitted, and each variant's file and threshold."""
    card = {
        "labels": preprocess_meta["class_names"],
        "input": {
            "shape": [1, *preprocess_meta["input_shape"]],
            "dtype": "uint8",
            "range": [0, 255],
            "color_mode": preprocess_meta["color_mode"],
            "image_size": preprocess_meta["image_size"],
            "resize": "cv2.INTER_AREA when shrinking, INTER_LINEAR when growing, to a square",
        },
        "output": "probabilities, one per label in labels.txt order; int8 variant: uint8, dequantize with the output tensor's scale and zero point",
        "outputs": {
            "probabilities": "the output above",
            "features": "what the last layer sees (penultimate features), for the unknown detector",
        },
        "variants": {name: os.path.relpath(path, card_folder) for name, path in files.items()},
    }
    if verdict is not None:
        card["verdict"] = {"fit_to_ship": bool(verdict["fit_to_ship"]), "reason": verdict["reason"]}
    card["unblessed"] = dict(unblessed or {})
    if unknown is not None:
        card["unknown"] = unknown
    return card


def unfit_reason(card: dict) -> str | None:
    """Why a model card's model is not fit to ship (evaluate's verdict), or None. A card written before
    verdicts existed has none: it is taken as fit."""
    verdict = card.get("verdict") or {}
    if verdict.get("fit_to_ship", True):
        return None
    return str(verdict.get("reason") or "evaluate found it not fit to ship")


# Which variant to fall back to when the one asked for is not blessed: the float ones lose nothing by design.
FALLBACK_ORDER = ("float32", "float16", "dynamic", "int8", "onnx")


def unblessed_reason(card: dict, variant: str) -> str | None:
    """Why export's gate did not bless ``variant`` (it lost accuracy beyond noise), or None. A card
    written before blessings existed has none: every variant is taken as blessed."""
    return (card.get("unblessed") or {}).get(variant)


def blessed_fallback(card: dict) -> str | None:
    """The first blessed variant the card lists, in :data:`FALLBACK_ORDER`, or None."""
    listed = card.get("variants") or {}
    return next((v for v in FALLBACK_ORDER if v in listed and not unblessed_reason(card, v)), None)
