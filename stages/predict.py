"""Stage predict: label new images with an exported .tflite model.

    python stages/predict.py PATH [PATH ...] [--variant int8] [--output reports/predictions.csv]

PATH is a folder of images, a folder with a CSV of image names, a CSV, or image files.
Without PATH, ``predict.input`` from params.yaml is used.
"""

import argparse
import logging
import sys

from imgclf.export import TFLiteClassifier
from imgclf.io import PipelineError, load_params, read_json, run_stage, write_csv
from imgclf.paths import layout
from imgclf.predict import collect, predict

log = logging.getLogger("imgclf.predict")


def main() -> None:
    params = load_params("predict")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", help="folders, CSV files or images (default: predict.input)")
    parser.add_argument("--variant", default=params.get("variant", "int8"))
    parser.add_argument("--output", default=params.get("output", "reports/predictions.csv"))
    parser.add_argument("--csv-column", default=params.get("csv_column"))
    parser.add_argument("--top-k", type=int, default=int(params.get("top_k", 3)))
    args = parser.parse_args()
    inputs = args.inputs or ([params["input"]] if params.get("input") else [])
    if not inputs:
        raise PipelineError("nothing to predict: give a folder, CSV or image, or set predict.input in params.yaml")

    paths = layout()
    model_path = paths.tflite_model(args.variant)
    if not model_path.exists():
        raise PipelineError(f"{model_path} not found: run `dvc repro export-tflite` (variant {args.variant!r})")
    card = read_json(paths.tflite_meta)
    items = collect(inputs, args.csv_column)
    table = predict(
        TFLiteClassifier(model_path),
        items,
        card["labels"],
        card["input"]["image_size"],
        card["input"]["color_mode"],
        args.top_k,
    )
    write_csv(args.output, table)
    errors = int((table["error"].fillna("") != "").sum())
    log.info("predicted %d image(s), %d error row(s) -> %s", len(table) - errors, errors, args.output)


if __name__ == "__main__":
    sys.exit(run_stage("predict", main))
