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
import sys

import numpy as np
import pandas as pd

from imgclf.export import TFLiteClassifier
from imgclf.ingest import read_manifest
from imgclf.io import PipelineError, load_params, read_json, read_npy, run_stage, write_csv
from imgclf.paths import layout
from imgclf.predict import collect, predict, prediction_table

log = logging.getLogger("imgclf.predict")


def predict_split(classifier, paths, labels: list[str], top_k: int) -> pd.DataFrame:
    """Every row of the source's predict split, in the source's order: a prediction or why not."""
    source = read_manifest(paths.ingested_manifest)
    source = source[source["split"] == "predict"]
    index = read_manifest(paths.preprocessed_index)
    prepared = index[index["split"] == "predict"].reset_index(drop=True)
    x = read_npy(paths.preprocessed_x("predict"))
    quarantine = read_manifest(paths.quarantine).set_index("id")
    position = {id_: i for i, id_ in enumerate(prepared["id"])}
    images, errors = [], []
    for id_ in source["id"]:
        if id_ in position:
            images.append(np.asarray(x[position[id_]]))
            errors.append("")
        else:
            images.append(None)
            why = quarantine.loc[id_] if id_ in quarantine.index else None
            errors.append(f"{why['rule']}: {why['reason']}" if why is not None else "not kept by validate")
    names = source["name"] if "name" in source else source["id"]
    return prediction_table(classifier, list(names), images, errors, labels, top_k)


def main() -> None:
    params = load_params("predict")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", help="folders, CSV files or images (default: the predict split)")
    parser.add_argument("--variant", default=params.get("variant", "int8"))
    parser.add_argument(
        "--output", help="CSV to write (default: reports/predict/predictions.csv, or predictions.csv with PATH)"
    )
    parser.add_argument("--csv-column", default=params.get("csv_column"))
    parser.add_argument("--top-k", type=int, default=int(params.get("top_k", 3)))
    args = parser.parse_args()

    paths = layout()
    model_path = paths.tflite_model(args.variant)
    if not model_path.exists():
        raise PipelineError(f"{model_path} not found: run `dvc repro export-tflite` (variant {args.variant!r})")
    card = read_json(paths.tflite_meta)
    classifier = TFLiteClassifier(model_path)
    if args.inputs:
        items = collect(args.inputs, args.csv_column)
        table = predict(
            classifier, items, card["labels"], card["input"]["image_size"], card["input"]["color_mode"], args.top_k
        )
        output = args.output or "predictions.csv"
    else:
        table = predict_split(classifier, paths, card["labels"], args.top_k)
        output = args.output or paths.predict_output
        if table.empty:
            log.info("the source has no unlabelled images (no predict split): writing an empty table")
    write_csv(output, table)
    errors = int((table["error"].fillna("") != "").sum())
    log.info("predicted %d image(s), %d error row(s) -> %s", len(table) - errors, errors, output)


if __name__ == "__main__":
    sys.exit(run_stage("predict", main))
