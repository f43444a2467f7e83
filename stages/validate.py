"""Stage validate: data/ingested/ -> data/validated/ (kept rows) + quarantine, warnings and reports."""

import logging

from imgclf.data.ingest import read_ingested
from imgclf.data.validation import summary_markdown, validate
from imgclf.io import PipelineError, write_csv, write_json, write_text
from imgclf.stage import run_stage

log = logging.getLogger(__name__)


def main(params, paths):
    images, manifest, meta = read_ingested(paths)
    log.info("read %d rows from %s", len(manifest), paths.ingested_manifest)
    result = validate(manifest, images, meta["class_names"], params, params["workers"])
    # Reports are written even when the stage fails, so the user can read why.
    write_csv(paths.quarantine, result.quarantine)
    write_csv(paths.validation_warnings, result.warnings)
    write_json(paths.validation_report, result.report)
    write_text(paths.validation_summary, summary_markdown(result.report, result.failures, result.warnings))
    report = result.report
    log.info(
        "%d rows in, %d kept, %d quarantined, %d kept with warnings",
        report["rows_in"],
        report["rows_kept"],
        report["rows_quarantined"],
        report["rows_warned"],
    )
    if result.failures:
        raise PipelineError(f"validation failed: {result.failures[0]} (see {paths.validation_summary})")
    write_csv(paths.validated_manifest, result.kept)
    return [paths.validated_manifest, paths.quarantine, paths.validation_warnings, paths.validation_report]


if __name__ == "__main__":
    run_stage("validate", main)
