"""Stage ingest: the source dataset -> data/ingested/ (packed images + manifest)."""

import logging
import sys

from imgclf.ingest import ingest
from imgclf.io import describe, load_params, run_stage
from imgclf.paths import layout

log = logging.getLogger("imgclf.ingest")


def main() -> None:
    params = load_params("ingest")
    paths = layout()
    meta = ingest(params, paths)
    log.info("%d rows, %d classes, format %s", meta["rows"], len(meta["class_names"]), meta["format"])
    for path in (paths.ingested_images, paths.ingested_blob, paths.ingested_manifest, paths.ingested_meta):
        if path.exists():
            log.info("wrote %s", describe(path))


if __name__ == "__main__":
    sys.exit(run_stage("ingest", main))
