"""Stage predict: label images nobody has labelled with an exported .tflite model.

    python stages/predict.py                      # the pipeline's predict split (DVC stage)
    python stages/predict.py PATH [PATH ...] [--variant int8] [--output predictions.csv]

Without PATH it predicts the source's unlabelled images (a test CSV without labels, loose files
in test/): the arrays preprocess prepared, plus an error row for each one validate quarantined,
into reports/predict/predictions.csv. PATH is a folder of images, a folder with a CSV of image
names, a CSV, or image files, read and prepared the same way.
"""

import argparse
import logging
import typing

from imgclf.io import PipelineError, read_json, write_csv
from imgclf.params import Variant
from imgclf.ship.export import blessed_fallback, unblessed_reason, unfit_reason
from imgclf.ship.ood import Detector
from imgclf.ship.predict import collect, predict, predict_split
from imgclf.ship.runtime import load_classifier
from imgclf.stage import run_stage

log = logging.getLogger(__name__)


def unknown_detector(paths, variant: str) -> Detector | None:
    """The variant's out-of-distribution detector from export-tflite, or None (a model exported before it)."""
    path = paths.unknown_detector(variant)
    if not path.is_file():
        log.warning("%s not found: the unknown column stays empty (rerun export-tflite)", path)
        return None
    try:
        return Detector.load(path)
    except (OSError, ValueError) as error:
        raise PipelineError(f"{path}: not a detector export-tflite wrote ({error}); rerun export-tflite") from None


def main(params, paths):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", help="folders, CSV files or images (default: the predict split)")
    parser.add_argument("--variant", default=params["variant"], choices=typing.get_args(Variant))
    parser.add_argument(
        "--output", help="CSV to write (default: reports/predict/predictions.csv, or predictions.csv with PATH)"
    )
    parser.add_argument("--csv-column", default=params["csv_column"])
    parser.add_argument("--top-k", type=int, default=int(params["top_k"]))
    parser.add_argument(
        "--allow-unfit",
        action="store_true",
        default=params["allow_unfit"],
        help="predict even with a model evaluate found not fit to ship (predict.allow_unfit)",
    )
    args = parser.parse_args()

    model_path = paths.exported_model(args.variant)
    if not model_path.exists():
        raise PipelineError(
            f"{model_path} not found: run the export-tflite stage, with {args.variant!r} in export.variants"
        )
    card = read_json(paths.tflite_meta)
    unfit = unfit_reason(card)
    unblessed = unblessed_reason(card, args.variant)
    fallback = blessed_fallback(card) if unblessed else None
    if fallback:  # export's gate: this variant lost accuracy beyond noise; a blessed one answers instead
        log.warning("variant %s is %s; predicting with %s instead", args.variant, unblessed, fallback)
        model_path = paths.exported_model(fallback)
        if not model_path.exists():
            raise PipelineError(f"{model_path} (the blessed {fallback} variant) not found: run the export-tflite stage")
    elif unblessed and args.allow_unfit:
        log.warning("predicting with variant %s, %s (--allow-unfit)", args.variant, unblessed)
    elif unblessed and not unfit:
        unfit = f"variant {args.variant} is {unblessed}, and no exported variant is blessed"
    if unfit and args.allow_unfit:
        log.warning("predicting with a model NOT FIT TO SHIP (--allow-unfit): %s", unfit)
    elif unfit and args.inputs:
        raise PipelineError(
            f"the model is not fit to ship: {unfit} (reports/eval/summary.md; --allow-unfit to use it anyway)"
        )
    elif unfit:  # the pipeline's predict split: every row says why, and the experiment keeps its metrics
        output = args.output or paths.predict_output
        log.error("NOT FIT TO SHIP: %s. No predictions: each row of %s says so", unfit, output)
        table = predict_split(None, paths, card["labels"], args.top_k, refuse=f"model not fit to ship: {unfit}")
        write_csv(output, table)
        return [output]
    classifier = load_classifier(model_path)
    detector = unknown_detector(paths, fallback or args.variant)
    if args.inputs:
        items = collect(args.inputs, args.csv_column)
        size, mode = card["input"]["image_size"], card["input"]["color_mode"]
        table = predict(classifier, items, card["labels"], size, mode, args.top_k, detector)
        output = args.output or "predictions.csv"
    else:
        table = predict_split(classifier, paths, card["labels"], args.top_k, detector=detector)
        output = args.output or paths.predict_output
        if table.empty:
            log.info("the source has no unlabelled images (no predict split): writing an empty table")
    write_csv(output, table)
    errors = int((table["error"].fillna("") != "").sum())
    unknown = int((table["unknown"] == True).sum())  # noqa: E712 (NaN for error rows)
    log.info("predicted %d image(s) (%d unknown), %d error row(s) -> %s", len(table) - errors, unknown, errors, output)
    return [output]


if __name__ == "__main__":
    run_stage("predict", main)
