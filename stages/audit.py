"""Stage audit: likely label errors and problem images in the labelled data -> reports/audit/ and MLflow.

Label errors: every train and validation image scored by a model that never saw its label (k-fold
logistic regression on the trained network's penultimate features), then confident learning.
Image issues: blur, exposure, blank frames, odd shapes, duplicates under two labels, each measured
and held to a threshold. Nothing here changes the user's files: the report says what to do.
"""

import logging
import time

import mlflow
import numpy as np
import pandas as pd

from imgclf.data import quality
from imgclf.data.ingest import IngestedImages, read_manifest
from imgclf.data.shards import read_split
from imgclf.evaluate import audit, audit_report, label_issues
from imgclf.io import PipelineError, read_json, require, write_csv, write_json, write_text
from imgclf.stage import run_stage
from imgclf.team import tracking
from imgclf.train.models import load_trained

log = logging.getLogger(__name__)
LABELLED = ("train", "val")


def labelled_rows(paths) -> tuple[pd.DataFrame, list]:
    """The train and validation rows of preprocess's index, in the order of their arrays, and the arrays."""
    index = pd.read_csv(require(paths.preprocessed_index, "preprocess"), dtype={"source": str}, keep_default_na=False)
    rows, arrays = [], []
    for split in LABELLED:
        x, y = read_split(paths, split, lazy=True)
        part = index[index["split"] == split]
        same_rows = len(part) == len(y) and np.array_equal(part["shard"].to_numpy(), x.row_shards())
        if not same_rows or not np.array_equal(part["label_index"].to_numpy(), y):
            raise PipelineError(f"{paths.preprocessed_index} does not match the {split} arrays: rerun preprocess")
        rows.append(part)
        arrays.append(x)
    return pd.concat(rows, ignore_index=True), arrays


def main(params, paths):
    start = time.perf_counter()
    tracking.check_store(paths.root)
    class_names = read_json(require(paths.preprocessed_meta, "preprocess"))["class_names"]
    rows, arrays = labelled_rows(paths)
    features = audit.penultimate_features(load_trained(paths), arrays, int(params["batch_size"]))
    labels = rows["label_index"].to_numpy()
    proba, scored = label_issues.out_of_fold_probabilities(
        features, labels, len(class_names), int(params["folds"]), int(params["seed"]), int(params["max_iter"])
    )
    found = label_issues.find_label_issues(proba, labels, class_names)
    picked = rows.iloc[found["row"].to_numpy()]
    labels_table = pd.DataFrame({
        "source": picked["source"].to_numpy(), "split": picked["split"].to_numpy(),
        "given_label": found["given"], "suggested_label": found["suggested"],
        "score": found["score"], "reason": found["reason"],
    }, columns=audit.LABEL_COLUMNS)  # fmt: skip
    log.info(
        "%d of %d labelled images scored out of fold; %d likely label errors (%.1f s)",
        scored.sum(), len(rows), len(found), time.perf_counter() - start,
    )  # fmt: skip
    start = time.perf_counter()

    manifest = read_manifest(require(paths.validated_manifest, "validate")).reset_index(drop=True)
    reader = IngestedImages(paths, read_json(require(paths.ingested_meta, "ingest")))
    refs = reader.refs(manifest)
    hashed = "phash" in manifest and bool((manifest["phash"] != "").all())  # validate's, when its rule is on
    stats = pd.DataFrame(reader.map(quality.measure, refs, params["workers"], "measure", phash=not hashed))
    if hashed:
        stats["phash"] = manifest["phash"].to_numpy()
    labelled = (manifest["split"] != "predict") & (manifest["label"] != "")  # test images too: a duplicate is one
    issues = quality.find_image_issues(stats, manifest["label"].where(labelled, ""), params["images"])
    log.info("%d images measured, %d image issues (%.1f s)", len(stats), len(issues), time.perf_counter() - start)
    images_table = pd.DataFrame({
        "source": manifest["source"].to_numpy()[issues["row"].to_numpy()],
        "issue": issues["issue"], "value": issues["value"], "threshold": issues["threshold"],
    }, columns=audit.IMAGE_COLUMNS)  # fmt: skip

    accepted_file = paths.root / params["accepted"]
    accepted = audit.read_accepted(accepted_file)
    labels_table, skipped_labels = audit.drop_accepted(labels_table, audit.LABEL_ISSUE, accepted)
    images_table, skipped_images = audit.drop_accepted(images_table, images_table["issue"], accepted)
    if unmatched := audit.unmatched_accepted(accepted, manifest["source"]):
        log.warning(
            "%s: %d row(s) name no file of this dataset (first: %s)", accepted_file, len(unmatched), unmatched[0]
        )
    oof_accuracy = float((proba[scored].argmax(axis=1) == labels[scored]).mean()) if scored.any() else 0.0
    summary = audit.summary(
        labels_table, images_table, int(scored.sum()), len(manifest), skipped_labels + skipped_images, oof_accuracy
    )

    gallery = int(params["gallery"])
    shown = set(labels_table["source"].head(gallery))
    for _, group in images_table.groupby("issue"):
        shown |= set(group["source"].head(gallery))
    position = {source: i for i, source in enumerate(manifest["source"])}
    thumbnails = {
        s: audit_report.thumbnail_uri(reader.image(refs[position[s]])) for s in sorted(shown) if s in position
    }
    page = audit_report.render(summary, labels_table, images_table, thumbnails, params["accepted"], gallery)

    write_csv(paths.label_issues, labels_table)
    write_csv(paths.image_issues, images_table)
    write_json(paths.audit_summary, audit.headline(summary))
    write_json(paths.audit_detail, summary)
    write_text(paths.audit_report, page)
    with tracking.training_run(paths):
        mlflow.log_metrics({f"audit_{key}": value for key, value in summary.items()})
        for path in (paths.label_issues, paths.image_issues, paths.audit_detail, paths.audit_report):
            mlflow.log_artifact(str(path), "audit")
    log.info(
        "audit: %d likely label errors (%.1f %%), %d images with an image issue; see %s",
        summary["label_issues"], 100 * audit.flagged_share(summary), summary["images_with_issues"], paths.audit_report,
    )  # fmt: skip
    if warning := audit.weak_features_warning(summary):
        log.warning("%s", warning)
    return [paths.label_issues, paths.image_issues, paths.audit_summary, paths.audit_detail, paths.audit_report]


if __name__ == "__main__":
    run_stage("audit", main)
