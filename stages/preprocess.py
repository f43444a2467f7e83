"""Stage preprocess: validated rows -> uint8 arrays (N,H,W,C) per split in shards, class names, split index."""

import logging

import numpy as np

from imgclf.data.images import COLOR_MODES
from imgclf.data.ingest import read_ingested, read_manifest
from imgclf.data.preprocess import assign_splits, shard_order, write_split
from imgclf.io import PipelineError, describe, require, write_csv, write_json
from imgclf.paths import SPLITS
from imgclf.stage import run_stage

log = logging.getLogger(__name__)


def main(params, paths):
    images, _, meta = read_ingested(paths)
    manifest = read_manifest(require(paths.validated_manifest, "validate")).reset_index(drop=True)
    class_names = meta["class_names"]
    size, color_mode = int(params["image_size"]), params["color_mode"]
    manifest["split"] = assign_splits(
        manifest, float(params["val_fraction"]), float(params["test_fraction"]), int(params["seed"])
    )
    manifest["label_index"] = manifest["label"].map({name: i for i, name in enumerate(class_names)})
    labelled = manifest[manifest["split"] != "predict"]
    unknown = labelled[labelled["label_index"].isna()]
    if len(unknown):
        raise PipelineError(
            f"{len(unknown)} validated row(s) have labels outside the class list (e.g. {unknown['label'].iloc[0]!r}); "
            "set validate.rules.unknown_label to error so validate quarantines them"
        )
    manifest["label_index"] = manifest["label_index"].fillna(-1).astype(np.int64)  # -1: unlabelled (predict)
    manifest = shard_order(manifest)  # the arrays' row order, and index.csv's
    counts = {}
    for split in (*SPLITS, "predict"):
        rows = manifest[manifest["split"] == split]
        write_split(images, rows, paths.preprocessed_split(split), size, color_mode, params["workers"])
        counts[split] = len(rows)
        log.info("%s: %d images -> %s", split, len(rows), describe(paths.preprocessed_split(split)))
    if "name" not in manifest:  # array sources: the id is the name
        manifest["name"] = manifest["id"]
    columns = ["id", "name", "split", "label", "label_index", "source", "sha256", "shard"]
    write_csv(paths.preprocessed_index, manifest[columns])
    write_json(
        paths.preprocessed_meta,
        {
            "class_names": class_names,
            "image_size": size,
            "color_mode": color_mode,
            "channels": COLOR_MODES[color_mode],
            "input_shape": [size, size, COLOR_MODES[color_mode]],
            "counts": counts,
        },
    )
    return [paths.preprocessed_index, paths.preprocessed_meta]


if __name__ == "__main__":
    run_stage("preprocess", main)
