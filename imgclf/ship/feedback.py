"""Served mistakes into the next training set: ``python -m imgclf.feedback export data/raw/<photos>``.

Every captured image a person confirmed or corrected on the page (``POST /v1/feedback``) is copied
into the class-folder layout under the label they gave: ``<folder>/<label>/feedback-<hash>.<ext>``,
or ``<folder>/train/<label>/...`` when the folder has a ``train/`` (the layout with a test folder:
the test images stay as they are, so promote judges the retrained model on the same ones). A label
with a ``/`` gets a folder name ingest maps back (``T-shirt_top`` for ``T-shirt/top``). New
files only, never an overwrite: an image exported before is skipped. What came from where (the
prediction id, what the model answered, the outcome) is appended to ``<folder>.feedback.csv``
*beside* the folder: a CSV inside it is what ingest reads as a label table.

Two targets: your photos' folder (``ingest.source``), or a folder of its own that ``ingest.extra``
adds to any source: the way for Fashion-MNIST, whose images are not a folder, or for a dataset with
a CSV label table. Then ``dvc add`` the folder and ``dvc repro``: the retrained model is a
candidate, and promote decides on the same test images whether it becomes the champion.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from imgclf.data.folders import detect_layout, folder_name
from imgclf.io import PipelineError, write_csv
from imgclf.ship.prediction_log import read

log = logging.getLogger(__name__)
MANIFEST_COLUMNS = ["file", "label", "outcome", "prediction_id", "answered", "probability", "unknown",
                    "model", "predicted_at", "exported_at", "sha256"]  # fmt: skip
IMAGE_SUFFIXES = (".png", ".jpg", ".gif", ".bmp", ".webp", ".tif")


def manifest_path(folder: Path) -> Path:
    """``data/raw/photos`` -> ``data/raw/photos.feedback.csv`` (beside the folder, not in it)."""
    return folder.parent / f"{folder.name}.feedback.csv"


def reviewed(log_path: Path) -> pd.DataFrame:
    """Each prediction people gave feedback on (their latest word), with what the model answered."""
    rows = read(
        log_path,
        """SELECT p.id, p.label, p.probability, p.unknown, p.model, p.time, p.image_sha256, p.captured,
                  f.label, f.outcome
           FROM predictions p JOIN feedback f ON f.prediction_id = p.id
           WHERE f.id = (SELECT MAX(id) FROM feedback WHERE prediction_id = p.id)
           ORDER BY f.id""",
    )
    columns = ["prediction_id", "answered", "probability", "unknown", "model", "predicted_at", "sha256",
               "captured", "label", "outcome"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def export(log_path: Path, folder: Path) -> tuple[pd.DataFrame, list[str]]:
    """Copy the reviewed, captured images into ``folder``'s class folders; the manifest rows written and
    a line for each reviewed image not exported (and why)."""
    if (folder.exists() and not folder.is_dir()) or not folder.parent.is_dir():
        raise PipelineError(
            f"{folder if folder.exists() else folder.parent} is not a folder: export into data/raw/<name>"
        )
    if folder.is_dir() and detect_layout(folder) == "csv":
        raise PipelineError(
            f"{folder} holds a CSV label table, which ingest reads instead of class folders: export into a "
            "folder of its own (data/raw/feedback) and set ingest.extra to it"
        )
    target_root = folder / "train" if (folder / "train").is_dir() else folder
    table = reviewed(log_path)
    manifest = manifest_path(folder)
    done = (
        pd.read_csv(manifest, dtype=str, keep_default_na=False)
        if manifest.is_file()
        else pd.DataFrame(columns=MANIFEST_COLUMNS)
    )
    already = set(done["sha256"] + "/" + done["label"])
    written, skipped, now = [], [], time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    for row in table.itertuples(index=False):
        source = log_path.parent / row.captured if isinstance(row.captured, str) and row.captured else None
        if f"{row.sha256}/{row.label}" in already:
            continue  # exported before: nothing to do, nothing to say
        if source is None or not source.is_file():
            skipped.append(f"{row.prediction_id}: its image was not kept (serve.capture, or its disk budget)")
        elif source.suffix not in IMAGE_SUFFIXES:
            skipped.append(f"{row.prediction_id}: {source.name} is not an image format ingest reads")
        else:
            name = Path(folder_name(row.label)) / f"feedback-{row.sha256[:16]}{source.suffix}"
            target = target_root / name
            if target.exists():
                skipped.append(f"{row.prediction_id}: {target} exists; not overwritten")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.tmp")
            try:
                shutil.copyfile(source, temporary)
            except FileNotFoundError:  # the service evicted it a moment ago (its disk budget)
                skipped.append(f"{row.prediction_id}: its image was deleted while exporting (disk budget)")
                continue
            temporary.replace(target)  # a half-copied file never appears under its name
            written.append({
                "file": target.relative_to(folder).as_posix(), "label": row.label, "outcome": row.outcome,
                "prediction_id": row.prediction_id, "answered": row.answered, "probability": row.probability,
                "unknown": "" if pd.isna(row.unknown) else bool(row.unknown), "model": row.model,
                "predicted_at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row.predicted_at)),
                "exported_at": now, "sha256": row.sha256,
            })  # fmt: skip
            already.add(f"{row.sha256}/{row.label}")
    new = pd.DataFrame(written, columns=MANIFEST_COLUMNS)
    if len(new):
        write_csv(manifest, pd.concat([done, new.astype(str)], ignore_index=True))
    return new, skipped


def main(argv: list[str] | None = None) -> int:
    """``python -m imgclf.feedback export FOLDER [--log PATH]``: exit 0, or 2 with one line when it cannot run."""
    from imgclf.params import load_section

    parser = argparse.ArgumentParser(prog="python -m imgclf.feedback", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    exporting = commands.add_parser("export", help="copy reviewed images into a class-folder dataset")
    exporting.add_argument("folder", help="your photos' folder, e.g. data/raw/photos")
    exporting.add_argument("--log", help="the prediction log (default: serve.log in params.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        log_path = args.log or load_section("serve")["log"]
        if not log_path:
            raise PipelineError("no prediction log: serve.log is null in params.yaml; pass --log")
        new, skipped = export(Path(log_path), Path(args.folder))
        step = next_step(Path(args.folder), load_section("ingest")) if len(new) else ""
    except PipelineError as error:
        print(f"imgclf.feedback: error: {error}", file=sys.stderr)
        return 2
    for line in skipped:
        log.warning("not exported: %s", line)
    counts = new["outcome"].value_counts().to_dict() if len(new) else {}
    print(f"{len(new)} image(s) exported into {args.folder} ({counts.get('corrected', 0)} corrected, "
          f"{counts.get('correct', 0)} confirmed), {len(skipped)} not; manifest {manifest_path(Path(args.folder))}")  # fmt: skip
    if step:
        print(step)
    return 0


def next_step(folder: Path, ingest: dict) -> str:
    """What to run after an export: the folder must be the source or ``ingest.extra`` to be trained on."""
    if any(setting and Path(setting).resolve() == folder.resolve() for setting in (ingest["source"], ingest["extra"])):
        return f"next: dvc add {folder} && dvc repro"
    instead = f" (now {ingest['extra']})" if ingest["extra"] else ""
    return f"next: set ingest.extra: {folder} in params.yaml{instead}, then dvc add {folder} && dvc repro"
