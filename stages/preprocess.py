"""Stage preprocess: validated rows -> uint8 arrays (N,H,W,C) per split, class names, split index."""

import logging
import sys

import numpy as np

from imgclf.ingest import read_ingested, read_manifest
from imgclf.io import PipelineError, describe, load_params, run_stage, write_csv, write_json, write_npy
from imgclf.paths import SPLITS, layout
from imgclf.preprocess import COLOR_MODES, assign_splits, write_split

log = logging.getLogger("imgclf.preprocess")


def main() -> None:
    params = load_params("preprocess")
    paths = layout()
    images, _, meta = read_ingested(paths)
    if not paths.validated_manifest.exists():
        raise PipelineError(f"{paths.validated_manifest} not found: run the validate stage first")
    manifest = read_manifest(paths.validated_manifest).reset_index(drop=True)
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
    counts = {}
    for split in (*SPLITS, "predict"):
        rows = manifest[manifest["split"] == split]
        write_split(images, images.refs(rows), paths.preprocessed_x(split), size, color_mode, params.get("workers"))
        write_npy(paths.preprocessed_y(split), rows["label_index"].to_numpy(dtype=np.int64))
        counts[split] = len(rows)
        log.info("%s: %d images -> %s", split, len(rows), describe(paths.preprocessed_x(split)))
    if "name" not in manifest:  # array sources: the id is the name
        manifest["name"] = manifest["id"]
    write_csv(paths.preprocessed_index, manifest[["id", "name", "split", "label", "label_index", "source", "sha256"]])
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


if __name__ == "__main__":
    sys.exit(run_stage("preprocess", main))
