"""Stage ingest: the source dataset -> data/ingested/ (packed images + manifest)."""

import logging
import sys

from imgclf.ingest import load_source, write_ingested
from imgclf.io import describe, load_params, run_stage
from imgclf.paths import layout

log = logging.getLogger("imgclf.ingest")


def main() -> None:
    params = load_params("ingest")
    paths = layout()
    dataset = load_source(params)
    log.info(
        "read %d images of shape %s, %d classes",
        len(dataset.images),
        dataset.images.shape[1:],
        len(dataset.class_names),
    )
    write_ingested(paths, dataset)
    for path in (paths.ingested_images, paths.ingested_manifest, paths.ingested_meta):
        log.info("wrote %s", describe(path))


if __name__ == "__main__":
    sys.exit(run_stage("ingest", main))
