"""Stage ingest: the source dataset -> data/ingested/ (packed images + manifest)."""

import logging

from imgclf.data.ingest import ingest
from imgclf.stage import run_stage

log = logging.getLogger(__name__)


def main(params, paths):
    meta = ingest(params, paths)
    log.info("%d rows, %d classes, format %s", meta["rows"], len(meta["class_names"]), meta["format"])
    candidates = (paths.ingested_images, paths.ingested_shards, paths.ingested_manifest, paths.ingested_meta)
    return [path for path in candidates if path.exists()]


if __name__ == "__main__":
    run_stage("ingest", main)
