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
from typing import NamedTuple

import numpy as np
import pandas as pd

from imgclf.data import images as image_files
from imgclf.data.ingest import IngestedImages, Ref, pixel_sha256
from imgclf.io import PipelineError

log = logging.getLogger(__name__)

SEVERITIES = ("error", "warn", "off")
QUARANTINE_COLUMNS = ["id", "split", "label", "source", "rule", "reason"]
INFO_COLUMNS = ["format", "width", "height", "mode", "decode_error", "phash"]
PIXELS = "pixels_sha256"  # mixed data only: a file's pixels hashed as an array row's (see _pixels_sha256)
LABELLED = ("train", "val")  # splits a model learns from


@dataclass
class ValidationResult:
    kept: pd.DataFrame
    quarantine: pd.DataFrame
    warnings: pd.DataFrame  # rows kept although a ``warn`` rule flagged them
    report: dict
    failures: list[str]


# --- inspection ----------------------------------------------------------------------------------


def _inspect(reader: IngestedImages, ref: Ref, max_pixels: int, phash: bool, pixels: bool = False) -> dict:
    info = {"format": "", "width": 0, "height": 0, "mode": "", "decode_error": "", "phash": "", PIXELS: ""}
    if reader.in_array(ref):
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
        if pixels:
            info[PIXELS] = _pixels_sha256(image, reader.array_shape)
    if phash:
        info["phash"] = f"{image_files.perceptual_hash(image):016x}"
    return info


def _pixels_sha256(image: np.ndarray, array_shape: tuple[int, ...]) -> str:
    """The hash ingest gives an array row (:func:`imgclf.data.ingest.pixel_sha256`), for a file that decodes
    to the same pixels (a Fashion-MNIST image saved as a PNG and sent back as feedback); "" otherwise."""
    if image.ndim == 3 and image.shape[:2] == tuple(array_shape[:2]) and len(array_shape) == 2:
        gray = image[..., 0]
        if (image == gray[..., None]).all():
            return pixel_sha256(gray[None])[0]
    return ""


def inspect(reader: IngestedImages, manifest: pd.DataFrame, params: dict, workers: int | None = None) -> pd.DataFrame:
    """One row of image facts (``INFO_COLUMNS``) per manifest row, in manifest order; for mixed data (an
    array plus files: ``ingest.extra``) also ``PIXELS``, so the duplicate rules see a file that holds an
    array row's pixels (its file hash never equals their pixel hash)."""
    refs = reader.refs(manifest)
    phash = _severities(params)["near_duplicate_across_splits"] != "off"
    max_pixels = int(params["max_pixels"])
    pixels = reader.format == "mixed"
    infos = reader.map(_inspect, refs, workers, "inspect", max_pixels=max_pixels, phash=phash, pixels=pixels)
    return pd.DataFrame(infos, columns=INFO_COLUMNS + ([PIXELS] if pixels else []), index=manifest.index)


def _content(rows: pd.DataFrame) -> pd.Series:
    """What the duplicate rules compare: the pixel hash where a file has one (mixed data), else ``sha256``."""
    if PIXELS not in rows:
        return rows["sha256"]
    return rows[PIXELS].where(rows[PIXELS] != "", rows["sha256"])


# --- row rules: (rows still kept, class names, params) -> {row label: reason} ---------------------


def _from_ingest(rule: str) -> Callable[..., dict]:
    def check(rows: pd.DataFrame, class_names: list[str], params: dict) -> dict:
        flagged = rows[rows["problem_rule"] == rule]
        return dict(zip(flagged.index, flagged["problem"], strict=True))

    check.__doc__ = f"Rows ingest marked {rule!r} (it never reads outside the dataset folder)."
    return check


def rule_file_size(rows: pd.DataFrame, class_names: list[str], params: dict) -> dict:
    limit_mb = float(params["max_file_mb"])
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
    allowed = set(params["formats"]) | {"array"}
    flagged = rows[~rows["format"].isin(allowed)]
    return {
        i: f"format {fmt} is not one of validate.formats ({', '.join(sorted(allowed - {'array'}))})"
        for i, fmt in flagged["format"].items()
    }


def rule_max_pixels(rows: pd.DataFrame, class_names: list[str], params: dict) -> dict:
    limit = int(params["max_pixels"])
    pixels = rows["width"].astype(np.int64) * rows["height"].astype(np.int64)
    flagged = rows[pixels > limit]
    return {
        i: f"declares {w}x{h} = {w * h:,} pixels > validate.max_pixels {limit:,} (decompression bomb?)"
        for i, w, h in zip(flagged.index, flagged["width"], flagged["height"], strict=True)
    }


def rule_min_edge(rows: pd.DataFrame, class_names: list[str], params: dict) -> dict:
    min_edge = int(params["min_edge"])
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
    rows = rows.assign(_content=_content(rows))
    candidates = rows[(rows["_content"] != "") & (rows["split"] != "predict")]
    for (_split, _sha), group in candidates.groupby(["split", "_content"], sort=False):
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
    rows = rows.assign(_content=_content(rows))
    test = rows[(rows["split"] == "test") & (rows["_content"] != "")].drop_duplicates("_content")
    test = test.set_index("_content")["id"]
    learn = rows[rows["split"].isin(LABELLED) & rows["_content"].isin(test.index)]
    return {i: f"same content as test image {test[sha]} (train/test leakage)" for i, sha in learn["_content"].items()}


def rule_near_duplicate_across_splits(rows: pd.DataFrame, class_names: list[str], params: dict) -> dict:
    """A training image whose perceptual hash is within a few bits of a test image's: likely the same photo."""
    max_distance = int(params["near_duplicate_distance"])
    hashed = rows[rows["phash"] != ""]
    learn, test = hashed[hashed["split"].isin(LABELLED)], hashed[hashed["split"] == "test"]
    if learn.empty or test.empty:
        return {}
    learn_content, test_content = _content(learn).to_numpy(), _content(test).to_numpy()
    learn_hashes = np.array([int(h, 16) for h in learn["phash"]], dtype=np.uint64)
    test_hashes = np.array([int(h, 16) for h in test["phash"]], dtype=np.uint64)
    reasons = {}
    for t, p, distance in image_files.hamming_within(test_hashes, learn_hashes, max_distance):
        i = learn.index[p]
        if i not in reasons and learn_content[p] != test_content[t]:  # identical: duplicate_across_splits
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


# --- dataset rules: (training + validation images per class, params) -> DatasetFinding ------------


class DatasetFinding(NamedTuple):
    """What a dataset rule flags: how many things (classes, or the whole set) and one line saying what."""

    hits: int
    message: str = ""  # empty when nothing is flagged


def rule_min_per_class(per_class: pd.Series, params: dict) -> DatasetFinding:
    min_per_class = int(params["min_per_class"])
    small = per_class[per_class < min_per_class]
    if small.empty:
        return DatasetFinding(0)
    listing = ", ".join(f"{label} ({n})" for label, n in small.items())
    return DatasetFinding(
        len(small), f"class(es) with fewer than validate.min_per_class={min_per_class} training images: {listing}"
    )


def rule_class_imbalance(per_class: pd.Series, params: dict) -> DatasetFinding:
    max_ratio = float(params["max_imbalance_ratio"])
    ratio = _imbalance_ratio(per_class)
    if ratio > max_ratio:
        return DatasetFinding(1, f"class imbalance ratio {ratio:.1f} > validate.max_imbalance_ratio {max_ratio:g}")
    return DatasetFinding(0)


def _imbalance_ratio(per_class: pd.Series) -> float:
    """Largest over smallest class, ignoring empty classes (min_per_class reports those); 0 when all are empty."""
    nonzero = per_class[per_class > 0]
    return float(nonzero.max() / nonzero.min()) if len(nonzero) else 0.0


DATASET_RULES: dict[str, Callable[[pd.Series, dict], DatasetFinding]] = {
    "min_per_class": rule_min_per_class,
    "class_imbalance": rule_class_imbalance,
}
# Bad files cannot be trained on, whatever the params say: these never go below error.
ALWAYS_ERROR = ("path_outside", "file_missing", "readable", "max_pixels")


# --- options -------------------------------------------------------------------------------------


def _check_options(params: dict) -> tuple[str, dict[str, str]]:
    """``on_error`` and every rule's severity, checked before any image is read."""
    on_error = params["on_error"]
    if on_error not in ("quarantine", "fail"):
        raise PipelineError(f"validate.on_error must be 'quarantine' or 'fail', got {on_error!r}")
    return on_error, _severities(params)


def _severities(params: dict) -> dict[str, str]:
    """Each rule's severity from ``validate.rules``; the rules a row cannot survive are always errors."""
    configured = params["rules"]
    unknown = set(configured) - set(ROW_RULES) - set(DATASET_RULES)
    if unknown:
        raise PipelineError(f"validate.rules has unknown rule(s): {', '.join(sorted(unknown))}")
    severities = {}
    for rule in (*ROW_RULES, *DATASET_RULES):
        severity = "error" if rule in ALWAYS_ERROR else configured[rule]
        if severity not in SEVERITIES:
            raise PipelineError(f"validate.rules.{rule} must be one of {SEVERITIES}, got {severity!r}")
        if rule in ALWAYS_ERROR and severity != "error":
            raise PipelineError(f"validate.rules.{rule} must stay 'error': such a row cannot be used at all")
        severities[rule] = severity
    return severities


# --- the engine ----------------------------------------------------------------------------------


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
    on_error, severities = _check_options(params)
    reader = images if isinstance(images, IngestedImages) else IngestedImages.from_array(images)
    manifest = _with_defaults(manifest.reset_index(drop=True))
    rows = manifest.join(inspect(reader, manifest, params, workers))

    row_report, dropped, warned = _run_row_rules(rows, class_names, params, severities)
    kept, quarantine, warnings = _tables(rows, dropped, warned)
    per_class = kept[kept["split"].isin(LABELLED)].groupby("label").size().reindex(class_names, fill_value=0)
    dataset_report, dataset_failures = _run_dataset_rules(per_class, params, severities)
    failures = [
        *_row_failures(rows, dropped, on_error),
        *dataset_failures,
        *_bad_fraction_failures(len(quarantine), len(rows), params),
    ]
    report = _report(
        len(rows), kept, quarantine, warnings, per_class, row_report | dataset_report, failures, reader.format
    )
    kept = kept.drop(columns=["decode_error", PIXELS], errors="ignore")
    return ValidationResult(kept, quarantine, warnings, report, failures)


def _run_row_rules(
    rows: pd.DataFrame, class_names: list[str], params: dict, severities: dict[str, str]
) -> tuple[dict[str, dict], dict[int, tuple[str, str]], list[tuple[int, str, str]]]:
    """Run ``ROW_RULES`` in order, each on the rows earlier error rules kept.

    Returns each rule's ``{severity, hits}``, the dropped rows ``{row: (rule, reason)}`` and the
    warned ones ``[(row, rule, reason)]``.
    """
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
    return rule_report, dropped, warned


def _run_dataset_rules(
    per_class: pd.Series, params: dict, severities: dict[str, str]
) -> tuple[dict[str, dict], list[str]]:
    """Run ``DATASET_RULES`` on the kept labelled rows' class counts; return each rule's ``{severity, hits}``
    and the failures (the messages of ``error`` rules).

    Unlike row rules, a rule at ``off`` still counts its hits in the report; it only says nothing.
    """
    rule_report: dict[str, dict] = {}
    failures: list[str] = []
    for name, rule in DATASET_RULES.items():
        finding = rule(per_class, params)
        rule_report[name] = {"severity": severities[name], "hits": finding.hits}
        if finding.hits and severities[name] != "off":
            if severities[name] == "error":
                failures.append(finding.message)
            log.warning(finding.message)
    return rule_report, failures


def _row_failures(rows: pd.DataFrame, dropped: dict[int, tuple[str, str]], on_error: str) -> list[str]:
    """With ``on_error: fail``, any row an error rule flagged fails the stage (the first one as example)."""
    if not dropped or on_error != "fail":
        return []
    i, (rule, reason) = min(dropped.items())
    return [f"{len(dropped)} row(s) break error rules, e.g. {rows.at[i, 'id']}: {rule}: {reason}"]


def _bad_fraction(quarantined: int, rows_in: int) -> float:
    return quarantined / rows_in if rows_in else 0.0


def _bad_fraction_failures(quarantined: int, rows_in: int, params: dict) -> list[str]:
    bad_fraction = _bad_fraction(quarantined, rows_in)
    max_bad = float(params["max_bad_fraction"])
    if bad_fraction > max_bad:
        return [
            f"{quarantined} of {rows_in} rows quarantined ({bad_fraction:.1%}) > validate.max_bad_fraction "
            f"{max_bad:.1%}; see reports/quarantine.csv"
        ]
    return []


# --- tables and report ---------------------------------------------------------------------------


def _tables(
    rows: pd.DataFrame, dropped: dict[int, tuple[str, str]], warned: list[tuple[int, str, str]]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Kept rows, the quarantine (in manifest order) and the warnings (in rule order)."""
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
    return rows.drop(index=positions), quarantine, warnings


def _report(
    rows_in: int,
    kept: pd.DataFrame,
    quarantine: pd.DataFrame,
    warnings: pd.DataFrame,
    per_class: pd.Series,
    rules: dict[str, dict],
    failures: list[str],
    image_format: str,
) -> dict:
    """``reports/validation.json``: counts, every rule's hits, and what the kept images look like."""
    report = {
        "rows_in": rows_in,
        "rows_kept": len(kept),
        "rows_quarantined": len(quarantine),
        "rows_warned": int(warnings["id"].nunique()),
        "bad_fraction": round(_bad_fraction(len(quarantine), rows_in), 6),
        "passed": not failures,
        "errors": len(failures),
        "warnings": sum(1 for r in rules.values() if r["severity"] == "warn" and r["hits"]),
        "rules": rules,
        "splits": {split: int(n) for split, n in kept.groupby("split").size().items()},
        "classes": {label: int(n) for label, n in per_class.items()},
        "classes_test": {label: int(n) for label, n in kept[kept["split"] == "test"].groupby("label").size().items()},
        "quarantined_by_rule": {rule: int(n) for rule, n in quarantine.groupby("rule").size().items()},
        "imbalance_ratio": round(_imbalance_ratio(per_class), 4),
        "formats": {fmt: int(n) for fmt, n in kept.groupby("format").size().items()},
        "modes": {mode: int(n) for mode, n in kept.groupby("mode").size().items()},
        "image_edges": _stats(np.minimum(kept["width"], kept["height"])),
        "image_widths": _stats(kept["width"]),
        "image_heights": _stats(kept["height"]),
        "file_mb": None
        if image_format == "array"
        else _stats(kept.loc[kept["format"] != "array", "file_bytes"] / 2**20, digits=3),
    }
    assert report["rows_in"] == report["rows_kept"] + report["rows_quarantined"]
    return report


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
