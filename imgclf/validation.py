"""validate: look at every image once, then run a small rule engine over the manifest.

Inspection decodes each image (in parallel, see :meth:`IngestedImages.map`) and records its
format, size, mode, whether it decodes, and a perceptual hash. Row rules then run **in order**,
each seeing only the rows that earlier ``error`` rules kept, so a row is quarantined for the
first thing wrong with it, and a duplicate's surviving copy is always a good one.

A rule's severity in ``validate.rules`` decides what happens to the rows it flags:

- ``error``: quarantined (``on_error: quarantine``) or the stage fails (``on_error: fail``);
- ``warn``: kept, counted in the report and listed in ``reports/validation_warnings.csv``;
- ``off``: not run.

Dataset rules (class counts, balance) look at what is kept; at ``error`` they fail the stage.
Every input row ends up either kept or in the quarantine table with its rule and a reason:
``rows_in == rows_kept + rows_quarantined`` always.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from imgclf import images as image_files
from imgclf.ingest import IngestedImages, Ref
from imgclf.io import PipelineError

log = logging.getLogger(__name__)

SEVERITIES = ("error", "warn", "off")
QUARANTINE_COLUMNS = ["id", "split", "label", "source", "rule", "reason"]
INFO_COLUMNS = ["format", "width", "height", "mode", "decode_error", "phash"]
LABELLED = ("train", "val")  # splits a model learns from
DEFAULTS = {
    "on_error": "quarantine",
    "max_bad_fraction": 0.05,
    "min_edge": 0,
    "max_file_mb": 6,
    "max_pixels": image_files.MAX_PIXELS,
    "formats": list(image_files.FORMATS),
    "near_duplicate_distance": 4,
    "min_per_class": 1,
    "max_imbalance_ratio": 10,
}


@dataclass
class ValidationResult:
    kept: pd.DataFrame
    quarantine: pd.DataFrame
    warnings: pd.DataFrame  # rows kept although a ``warn`` rule flagged them
    report: dict
    failures: list[str]


# --- inspection ----------------------------------------------------------------------------------


def _inspect(reader: IngestedImages, ref: Ref, max_pixels: int, phash: bool) -> dict:
    info = {"format": "", "width": 0, "height": 0, "mode": "", "decode_error": "", "phash": ""}
    if reader.format == "array":
        image = reader.raw(ref)
        channels = 1 if image.ndim == 2 else image.shape[2]
        info.update(format="array", height=image.shape[0], width=image.shape[1], mode="L" if channels == 1 else "RGB")
    else:
        if ref.skip:
            return info  # ingest already said why (missing, outside the folder, too big)
        data = reader.raw(ref).tobytes()
        try:
            header = image_files.read_header(data)
            info.update(format=header.format, width=header.width, height=header.height, mode=header.mode)
            if header.pixels > max_pixels:
                return info  # the max_pixels rule quarantines it; never decode a bomb
            image = image_files.decode(data, header=header)
        except image_files.ImageError as error:
            info["decode_error"] = str(error)
            return info
        info.update(height=image.shape[0], width=image.shape[1])  # upright, after EXIF orientation
    if phash:
        info["phash"] = f"{image_files.perceptual_hash(image):016x}"
    return info


def inspect(reader: IngestedImages, manifest: pd.DataFrame, params: dict, workers: int | None = None) -> pd.DataFrame:
    """One row of image facts (``INFO_COLUMNS``) per manifest row, in manifest order."""
    refs = reader.refs(manifest)
    phash = _severities(params)["near_duplicate_across_splits"] != "off"
    max_pixels = int(params.get("max_pixels", DEFAULTS["max_pixels"]))
    infos = reader.map(_inspect, refs, workers, "inspect", max_pixels=max_pixels, phash=phash)
    return pd.DataFrame(infos, columns=INFO_COLUMNS, index=manifest.index)


# --- row rules: (rows still kept, class names, params) -> {row label: reason} ---------------------


def _from_ingest(rule: str) -> Callable[..., dict]:
    def check(rows: pd.DataFrame, class_names: list[str], params: dict) -> dict:
        flagged = rows[rows["problem_rule"] == rule]
        return dict(zip(flagged.index, flagged["problem"], strict=True))

    check.__doc__ = f"Rows ingest marked {rule!r} (it never reads outside the dataset folder)."
    return check


def rule_file_size(rows: pd.DataFrame, class_names: list[str], params: dict) -> dict:
    limit_mb = float(params.get("max_file_mb", DEFAULTS["max_file_mb"]))
    big = rows[rows["file_bytes"] > limit_mb * 2**20]
    reasons = {i: f"{n / 2**20:.1f} MB > validate.max_file_mb {limit_mb:g}" for i, n in big["file_bytes"].items()}
    not_packed = rows[rows["problem_rule"] == "file_size"]
    return reasons | dict(zip(not_packed.index, not_packed["problem"], strict=True))


def rule_readable(rows: pd.DataFrame, class_names: list[str], params: dict) -> dict:
    """Undecodable, unreadable, or not packed by ingest (too big): no pixels to train on, whatever file_size says."""
    flagged = rows[rows["problem_rule"].isin(["readable", "file_size"]) | (rows["decode_error"] != "")]
    return {
        i: problem or error
        for i, problem, error in zip(flagged.index, flagged["problem"], flagged["decode_error"], strict=True)
    }


def rule_format(rows: pd.DataFrame, class_names: list[str], params: dict) -> dict:
    allowed = set(params.get("formats") or DEFAULTS["formats"]) | {"array"}
    flagged = rows[~rows["format"].isin(allowed)]
    return {
        i: f"format {fmt} is not one of validate.formats ({', '.join(sorted(allowed - {'array'}))})"
        for i, fmt in flagged["format"].items()
    }


def rule_max_pixels(rows: pd.DataFrame, class_names: list[str], params: dict) -> dict:
    limit = int(params.get("max_pixels", DEFAULTS["max_pixels"]))
    pixels = rows["width"].astype(np.int64) * rows["height"].astype(np.int64)
    flagged = rows[pixels > limit]
    return {
        i: f"declares {w}x{h} = {w * h:,} pixels > validate.max_pixels {limit:,} (decompression bomb?)"
        for i, w, h in zip(flagged.index, flagged["width"], flagged["height"], strict=True)
    }


def rule_min_edge(rows: pd.DataFrame, class_names: list[str], params: dict) -> dict:
    min_edge = int(params.get("min_edge", DEFAULTS["min_edge"]))
    edges = np.minimum(rows["width"], rows["height"])
    return {i: f"shortest edge {e} px < validate.min_edge {min_edge}" for i, e in edges[edges < min_edge].items()}


def rule_unknown_label(rows: pd.DataFrame, class_names: list[str], params: dict) -> dict:
    known, reasons = set(class_names), {}
    for i, label, split in zip(rows.index, rows["label"], rows["split"], strict=True):
        if split == "predict":
            continue  # unlabelled on purpose
        if label == "":
            reasons[i] = "label is empty"
        elif label not in known:
            reasons[i] = f"label {label!r} is not one of the {len(class_names)} classes"
    return reasons


def rule_duplicate_name(rows: pd.DataFrame, class_names: list[str], params: dict) -> dict:
    """The same file listed twice in one split (a repeated CSV row): keep the first listing."""
    repeated = rows[rows.duplicated(["split", "source"], keep="first")]
    first = rows.drop_duplicates(["split", "source"]).set_index(["split", "source"])["id"]
    return {
        i: f"listed again (first as {first[(s, src)]})"
        for i, s, src in zip(repeated.index, repeated["split"], repeated["source"], strict=True)
    }


def rule_duplicate_in_split(rows: pd.DataFrame, class_names: list[str], params: dict) -> dict:
    """Identical content twice in one split: keep the first copy; if the copies disagree on the label, drop all.

    The predict split is left alone: two identical unlabelled images both deserve a prediction.
    """
    reasons = {}
    candidates = rows[(rows["sha256"] != "") & (rows["split"] != "predict")]
    for (_split, _sha), group in candidates.groupby(["split", "sha256"], sort=False):
        if len(group) < 2:
            continue
        if group["label"].nunique() > 1:
            labels = ", ".join(sorted(group["label"].unique()))
            reasons |= {
                i: f"same content as {len(group) - 1} other row(s) with conflicting labels ({labels})"
                for i in group.index
            }
        else:
            reasons |= {i: f"same content as {group['id'].iloc[0]}" for i in group.index[1:]}
    return reasons


def rule_duplicate_across_splits(rows: pd.DataFrame, class_names: list[str], params: dict) -> dict:
    """A training or validation image identical to a test image leaks the test set: drop the training copy."""
    test = rows[(rows["split"] == "test") & (rows["sha256"] != "")].drop_duplicates("sha256").set_index("sha256")["id"]
    learn = rows[rows["split"].isin(LABELLED) & rows["sha256"].isin(test.index)]
    return {i: f"same content as test image {test[sha]} (train/test leakage)" for i, sha in learn["sha256"].items()}


def rule_near_duplicate_across_splits(rows: pd.DataFrame, class_names: list[str], params: dict) -> dict:
    """A training image whose perceptual hash is within a few bits of a test image's: likely the same photo."""
    max_distance = int(params.get("near_duplicate_distance", DEFAULTS["near_duplicate_distance"]))
    hashed = rows[rows["phash"] != ""]
    learn, test = hashed[hashed["split"].isin(LABELLED)], hashed[hashed["split"] == "test"]
    if learn.empty or test.empty:
        return {}
    learn_hashes = np.array([int(h, 16) for h in learn["phash"]], dtype=np.uint64)
    test_hashes = np.array([int(h, 16) for h in test["phash"]], dtype=np.uint64)
    reasons = {}
    for t, p, distance in image_files.hamming_within(test_hashes, learn_hashes, max_distance):
        i = learn.index[p]
        if i not in reasons and learn.at[i, "sha256"] != test["sha256"].iloc[t]:
            reasons[i] = f"looks like test image {test['id'].iloc[t]} (pHash distance {distance} <= {max_distance})"
    return reasons


ROW_RULES: dict[str, Callable[..., dict]] = {
    "path_outside": _from_ingest("path_outside"),
    "file_missing": _from_ingest("file_missing"),
    "file_size": rule_file_size,
    "readable": rule_readable,
    "format": rule_format,
    "max_pixels": rule_max_pixels,
    "min_edge": rule_min_edge,
    "unknown_label": rule_unknown_label,
    "duplicate_name": rule_duplicate_name,
    "duplicate_in_split": rule_duplicate_in_split,
    "duplicate_across_splits": rule_duplicate_across_splits,
    "near_duplicate_across_splits": rule_near_duplicate_across_splits,
}
DATASET_RULES = ("min_per_class", "class_imbalance")
DEFAULT_SEVERITY = {"near_duplicate_across_splits": "warn", "class_imbalance": "warn"}
# Bad files cannot be trained on, whatever the params say: these never go below error.
ALWAYS_ERROR = ("path_outside", "file_missing", "readable", "max_pixels")


def _severities(params: dict) -> dict[str, str]:
    configured = params.get("rules") or {}
    unknown = set(configured) - set(ROW_RULES) - set(DATASET_RULES)
    if unknown:
        raise PipelineError(f"validate.rules has unknown rule(s): {', '.join(sorted(unknown))}")
    severities = {}
    for rule in (*ROW_RULES, *DATASET_RULES):
        severity = configured.get(rule, DEFAULT_SEVERITY.get(rule, "error"))
        if severity not in SEVERITIES:
            raise PipelineError(f"validate.rules.{rule} must be one of {SEVERITIES}, got {severity!r}")
        if rule in ALWAYS_ERROR and severity != "error":
            raise PipelineError(f"validate.rules.{rule} must stay 'error': such a row cannot be used at all")
        severities[rule] = severity
    return severities


def _with_defaults(manifest: pd.DataFrame) -> pd.DataFrame:
    """Array-format manifests (Fashion-MNIST) lack the folder columns; give them neutral values."""
    return manifest.assign(
        **{
            column: manifest[column] if column in manifest else default
            for column, default in (("problem_rule", ""), ("problem", ""), ("file_bytes", 0))
        }
    )


def validate(
    manifest: pd.DataFrame,
    images: IngestedImages | np.ndarray,
    class_names: list[str],
    params: dict,
    workers: int | None = None,
) -> ValidationResult:
    """Inspect every image, apply all rules; return kept rows, quarantine, warnings, report, failures."""
    on_error = params.get("on_error", DEFAULTS["on_error"])
    if on_error not in ("quarantine", "fail"):
        raise PipelineError(f"validate.on_error must be 'quarantine' or 'fail', got {on_error!r}")
    severities = _severities(params)
    reader = images if isinstance(images, IngestedImages) else IngestedImages.from_array(images)
    manifest = _with_defaults(manifest.reset_index(drop=True))
    rows = manifest.join(inspect(reader, manifest, params, workers))

    rule_report: dict[str, dict] = {}
    dropped: dict[int, tuple[str, str]] = {}
    warned: list[tuple[int, str, str]] = []
    for name, rule in ROW_RULES.items():
        if severities[name] == "off":
            rule_report[name] = {"severity": "off", "hits": 0}
            continue
        alive = rows.drop(index=list(dropped))
        reasons = rule(alive, class_names, params)
        rule_report[name] = {"severity": severities[name], "hits": len(reasons)}
        if reasons:
            log.log(
                logging.WARNING if severities[name] == "warn" else logging.INFO, "%s: %d row(s)", name, len(reasons)
            )
        if severities[name] == "error":
            dropped |= {i: (name, reason) for i, reason in reasons.items()}
        else:
            warned += [(i, name, reason) for i, reason in reasons.items()]

    failures: list[str] = []
    if dropped and on_error == "fail":
        i, (rule, reason) = min(dropped.items())
        failures.append(f"{len(dropped)} row(s) break error rules, e.g. {rows.at[i, 'id']}: {rule}: {reason}")

    positions = sorted(dropped)
    quarantine = rows.loc[positions].assign(
        rule=[dropped[i][0] for i in positions], reason=[dropped[i][1] for i in positions]
    )[QUARANTINE_COLUMNS]
    warnings = pd.DataFrame(
        [
            (rows.at[i, "id"], rows.at[i, "split"], rows.at[i, "label"], rows.at[i, "source"], r, why)
            for i, r, why in warned
        ],
        columns=QUARANTINE_COLUMNS,
    )
    kept = rows.drop(index=positions)

    # dataset rules, on the labelled rows that remain
    per_class = kept[kept["split"].isin(LABELLED)].groupby("label").size().reindex(class_names, fill_value=0)
    min_per_class = int(params.get("min_per_class", DEFAULTS["min_per_class"]))
    small = per_class[per_class < min_per_class]
    rule_report["min_per_class"] = {"severity": severities["min_per_class"], "hits": len(small)}
    if len(small) and severities["min_per_class"] != "off":
        message = "class(es) with fewer than validate.min_per_class={} training images: {}".format(
            min_per_class, ", ".join(f"{label} ({n})" for label, n in small.items())
        )
        (failures if severities["min_per_class"] == "error" else []).append(message)
        log.warning(message)
    nonzero = per_class[per_class > 0]
    imbalance = float(nonzero.max() / nonzero.min()) if len(nonzero) else 0.0
    max_ratio = float(params.get("max_imbalance_ratio", DEFAULTS["max_imbalance_ratio"]))
    imbalanced = imbalance > max_ratio
    rule_report["class_imbalance"] = {"severity": severities["class_imbalance"], "hits": int(imbalanced)}
    if imbalanced and severities["class_imbalance"] != "off":
        message = f"class imbalance ratio {imbalance:.1f} > validate.max_imbalance_ratio {max_ratio:g}"
        (failures if severities["class_imbalance"] == "error" else []).append(message)
        log.warning(message)

    rows_in = len(rows)
    bad_fraction = len(quarantine) / rows_in if rows_in else 0.0
    max_bad = float(params.get("max_bad_fraction", DEFAULTS["max_bad_fraction"]))
    if bad_fraction > max_bad:
        failures.append(
            f"{len(quarantine)} of {rows_in} rows quarantined ({bad_fraction:.1%}) > validate.max_bad_fraction {max_bad:.1%}; "
            "see reports/quarantine.csv"
        )

    report = {
        "rows_in": rows_in,
        "rows_kept": len(kept),
        "rows_quarantined": len(quarantine),
        "rows_warned": int(warnings["id"].nunique()),
        "bad_fraction": round(bad_fraction, 6),
        "passed": not failures,
        "errors": len(failures),
        "warnings": sum(1 for r in rule_report.values() if r["severity"] == "warn" and r["hits"]),
        "rules": rule_report,
        "splits": {split: int(n) for split, n in kept.groupby("split").size().items()},
        "classes": {label: int(n) for label, n in per_class.items()},
        "classes_test": {label: int(n) for label, n in kept[kept["split"] == "test"].groupby("label").size().items()},
        "quarantined_by_rule": {rule: int(n) for rule, n in quarantine.groupby("rule").size().items()},
        "imbalance_ratio": round(imbalance, 4),
        "formats": {fmt: int(n) for fmt, n in kept.groupby("format").size().items()},
        "modes": {mode: int(n) for mode, n in kept.groupby("mode").size().items()},
        "image_edges": _stats(np.minimum(kept["width"], kept["height"])),
        "image_widths": _stats(kept["width"]),
        "image_heights": _stats(kept["height"]),
        "file_mb": _stats(kept["file_bytes"] / 2**20, digits=3) if reader.format == "bytes" else None,
    }
    assert report["rows_in"] == report["rows_kept"] + report["rows_quarantined"]
    return ValidationResult(kept.drop(columns=["decode_error"]), quarantine, warnings, report, failures)


def _stats(values: pd.Series, digits: int = 0) -> dict:
    if len(values) == 0:
        return {"min": 0, "median": 0, "max": 0}
    numbers = [float(values.min()), float(values.median()), float(values.max())]
    rounded = [round(n, digits) if digits else round(n) for n in numbers]
    return dict(zip(("min", "median", "max"), rounded, strict=True))


def summary_markdown(report: dict, failures: list[str], warnings: pd.DataFrame | None = None) -> str:
    """A short human-readable summary of ``reports/validation.json``."""
    lines = [
        "# Validation summary",
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}**: {report['rows_in']} rows in, "
        f"{report['rows_kept']} kept, {report['rows_quarantined']} quarantined ({report['bad_fraction']:.2%}), "
        f"{report.get('rows_warned', 0)} kept with warnings.",
        "",
        "Quarantined rows, each with its rule and reason: `reports/quarantine.csv`. "
        "Rows kept with a warning: `reports/validation_warnings.csv`.",
        "",
        "| rule (in order) | severity | rows hit |",
        "|---|---|---|",
        *[f"| {name} | {r['severity']} | {r['hits']} |" for name, r in report["rules"].items()],
        "",
        "| class | training + validation images | test images |",
        "|---|---|---|",
        *[
            f"| {label} | {n} | {report.get('classes_test', {}).get(label, 0)} |"
            for label, n in report["classes"].items()
        ],
        "",
        f"Class imbalance ratio (largest / smallest class): {report['imbalance_ratio']:.2f}. "
        f"Splits kept: {', '.join(f'{s} {n}' for s, n in report['splits'].items())}.",
        f"Shortest edge (px): min {report['image_edges']['min']}, median {report['image_edges']['median']}, "
        f"max {report['image_edges']['max']}. Formats: {', '.join(f'{f} {n}' for f, n in report['formats'].items())}.",
    ]
    if failures:
        lines += ["", "## Failures", "", *[f"- {f}" for f in failures]]
    if warnings is not None and len(warnings):
        lines += ["", "## Warnings (first 20)", "", "| id | rule | reason |", "|---|---|---|"]
        lines += [f"| {r.id} | {r.rule} | {r.reason} |" for r in warnings.head(20).itertuples()]
    return "\n".join(lines) + "\n"
