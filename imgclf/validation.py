"""validate: a small rule engine over the ingested manifest.

Row rules look at each image and flag the rows that break them; a rule's
severity in ``validate.rules`` decides what happens to a flagged row:

- ``error``: the row is quarantined (``on_error: quarantine``) or the stage fails
  (``on_error: fail``);
- ``warn``: the row is kept and counted in the report;
- ``off``: the rule is not run.

Dataset rules (class counts, balance) look at what is kept; at ``error`` they
fail the stage, at ``warn`` they are reported. Every input row ends up either
kept or in the quarantine table with its rule and a reason, so
``rows_in == rows_kept + rows_quarantined`` always holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from imgclf.io import PipelineError

log = logging.getLogger(__name__)

SEVERITIES = ("error", "warn", "off")
QUARANTINE_COLUMNS = ["id", "split", "label", "source", "rule", "reason"]


@dataclass
class Finding:
    """Rows a rule flagged, each with a human-readable reason."""

    rule: str
    reasons: dict[int, str] = field(default_factory=dict)  # manifest row position -> reason


@dataclass
class ValidationResult:
    kept: pd.DataFrame
    quarantine: pd.DataFrame
    report: dict
    failures: list[str]


def rule_unknown_label(manifest: pd.DataFrame, images: np.ndarray, class_names: list[str], params: dict) -> Finding:
    finding = Finding("unknown_label")
    known = set(class_names)
    for pos, label in enumerate(manifest["label"]):
        if label == "":
            finding.reasons[pos] = "label is empty"
        elif label not in known:
            finding.reasons[pos] = f"label {label!r} is not one of the {len(class_names)} classes"
    return finding


def rule_min_edge(manifest: pd.DataFrame, images: np.ndarray, class_names: list[str], params: dict) -> Finding:
    finding = Finding("min_edge")
    min_edge = int(params.get("min_edge", 0))
    for pos, index in enumerate(manifest["index"]):
        height, width = images[index].shape[:2]
        if min(height, width) < min_edge:
            finding.reasons[pos] = f"shortest edge {min(height, width)} px < validate.min_edge {min_edge}"
    return finding


def rule_duplicate_in_split(
    manifest: pd.DataFrame, images: np.ndarray, class_names: list[str], params: dict
) -> Finding:
    """Identical pixels twice in one split: keep the first copy; if the copies disagree on the label, drop all."""
    finding = Finding("duplicate_in_split")
    for (_split, _sha), group in manifest.groupby(["split", "sha256"], sort=False):
        if len(group) < 2:
            continue
        positions = [manifest.index.get_loc(i) for i in group.index]
        first_id = group["id"].iloc[0]
        if group["label"].nunique() > 1:
            labels = ", ".join(sorted(group["label"].unique()))
            for pos in positions:
                finding.reasons[pos] = (
                    f"same pixels as {len(group) - 1} other row(s) with conflicting labels ({labels})"
                )
        else:
            for pos in positions[1:]:
                finding.reasons[pos] = f"same pixels as {first_id}"
    return finding


def rule_duplicate_across_splits(
    manifest: pd.DataFrame, images: np.ndarray, class_names: list[str], params: dict
) -> Finding:
    """A training or validation image identical to a test image leaks the test set: drop the training copy."""
    finding = Finding("duplicate_across_splits")
    test_ids = manifest.loc[manifest["split"] == "test"].drop_duplicates("sha256").set_index("sha256")["id"]
    for pos, (split, sha) in enumerate(zip(manifest["split"], manifest["sha256"], strict=True)):
        if split in ("train", "val") and sha in test_ids.index:
            finding.reasons[pos] = f"same pixels as test image {test_ids[sha]} (train/test leakage)"
    return finding


ROW_RULES: dict[str, Callable[..., Finding]] = {
    "unknown_label": rule_unknown_label,
    "min_edge": rule_min_edge,
    "duplicate_in_split": rule_duplicate_in_split,
    "duplicate_across_splits": rule_duplicate_across_splits,
}
DATASET_RULES = ("min_per_class", "class_imbalance")


def _severities(params: dict) -> dict[str, str]:
    configured = params.get("rules") or {}
    unknown = set(configured) - set(ROW_RULES) - set(DATASET_RULES)
    if unknown:
        raise PipelineError(f"validate.rules has unknown rule(s): {', '.join(sorted(unknown))}")
    severities = {}
    for rule in (*ROW_RULES, *DATASET_RULES):
        severity = configured.get(rule, "error")
        if severity not in SEVERITIES:
            raise PipelineError(f"validate.rules.{rule} must be one of {SEVERITIES}, got {severity!r}")
        severities[rule] = severity
    return severities


def validate(manifest: pd.DataFrame, images: np.ndarray, class_names: list[str], params: dict) -> ValidationResult:
    """Apply all rules; return kept rows, the quarantine table, the report and failure messages."""
    on_error = params.get("on_error", "quarantine")
    if on_error not in ("quarantine", "fail"):
        raise PipelineError(f"validate.on_error must be 'quarantine' or 'fail', got {on_error!r}")
    severities = _severities(params)
    manifest = manifest.reset_index(drop=True)
    rule_report: dict[str, dict] = {}
    dropped: dict[int, tuple[str, str]] = {}  # first error rule wins
    failures: list[str] = []

    for name, rule in ROW_RULES.items():
        severity = severities[name]
        if severity == "off":
            rule_report[name] = {"severity": "off", "hits": 0}
            continue
        finding = rule(manifest, images, class_names, params)
        rule_report[name] = {"severity": severity, "hits": len(finding.reasons)}
        if finding.reasons:
            log.log(
                logging.WARNING if severity == "warn" else logging.INFO,
                "%s: %d row(s)",
                name,
                len(finding.reasons),
            )
        if severity == "error":
            for pos, reason in finding.reasons.items():
                dropped.setdefault(pos, (name, reason))

    if dropped and on_error == "fail":
        pos, (rule, reason) = next(iter(sorted(dropped.items())))
        failures.append(f"{len(dropped)} row(s) break error rules, e.g. {manifest.at[pos, 'id']}: {rule}: {reason}")

    drop_positions = sorted(dropped)
    quarantine = manifest.loc[drop_positions].assign(
        rule=[dropped[p][0] for p in drop_positions], reason=[dropped[p][1] for p in drop_positions]
    )[QUARANTINE_COLUMNS]
    kept = manifest.drop(index=drop_positions)

    # dataset rules, on the labelled rows that remain
    per_class = kept[kept["split"] != "test"].groupby("label").size().reindex(class_names, fill_value=0)
    min_per_class = int(params.get("min_per_class", 1))
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
    max_ratio = float(params.get("max_imbalance_ratio", 10))
    imbalanced = imbalance > max_ratio
    rule_report["class_imbalance"] = {"severity": severities["class_imbalance"], "hits": int(imbalanced)}
    if imbalanced and severities["class_imbalance"] != "off":
        message = f"class imbalance ratio {imbalance:.1f} > validate.max_imbalance_ratio {max_ratio:g}"
        (failures if severities["class_imbalance"] == "error" else []).append(message)
        log.warning(message)

    rows_in = len(manifest)
    bad_fraction = len(quarantine) / rows_in if rows_in else 0.0
    max_bad = float(params.get("max_bad_fraction", 0.05))
    if bad_fraction > max_bad:
        failures.append(
            f"{len(quarantine)} of {rows_in} rows quarantined ({bad_fraction:.1%}) > validate.max_bad_fraction {max_bad:.1%}; "
            "see reports/quarantine.csv"
        )

    edges = np.array([min(images[i].shape[:2]) for i in kept["index"]]) if len(kept) else np.array([0])
    report = {
        "rows_in": rows_in,
        "rows_kept": len(kept),
        "rows_quarantined": len(quarantine),
        "bad_fraction": round(bad_fraction, 6),
        "passed": not failures,
        "errors": len(failures),
        "warnings": sum(1 for r in rule_report.values() if r["severity"] == "warn" and r["hits"]),
        "rules": rule_report,
        "splits": {split: int(n) for split, n in kept.groupby("split").size().items()},
        "classes": {label: int(n) for label, n in per_class.items()},
        "quarantined_by_rule": {rule: int(n) for rule, n in quarantine.groupby("rule").size().items()},
        "imbalance_ratio": round(imbalance, 4),
        "image_edges": {"min": int(edges.min()), "max": int(edges.max())},
    }
    assert report["rows_in"] == report["rows_kept"] + report["rows_quarantined"]
    return ValidationResult(kept, quarantine, report, failures)


def summary_markdown(report: dict, failures: list[str]) -> str:
    """A short human-readable summary of ``reports/validation.json``."""
    lines = [
        "# Validation summary",
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}**: {report['rows_in']} rows in, "
        f"{report['rows_kept']} kept, {report['rows_quarantined']} quarantined ({report['bad_fraction']:.2%}).",
        "",
        "| rule | severity | rows hit |",
        "|---|---|---|",
        *[f"| {name} | {r['severity']} | {r['hits']} |" for name, r in report["rules"].items()],
        "",
        "| class | training + validation images |",
        "|---|---|",
        *[f"| {label} | {n} |" for label, n in report["classes"].items()],
        "",
        f"Class imbalance ratio (largest / smallest class): {report['imbalance_ratio']:.2f}.",
    ]
    if failures:
        lines += ["", "## Failures", "", *[f"- {f}" for f in failures]]
    return "\n".join(lines) + "\n"
