"""The data audit's pieces the stage wires: the network's penultimate features, the user's accepted
exceptions, and the counts DVC compares. The methods live in :mod:`imgclf.evaluate.label_issues`
(confident learning) and :mod:`imgclf.data.quality` (image checks)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd

from imgclf.data.quality import ISSUES
from imgclf.io import PipelineError

LABEL_ISSUE = "label"  # the accepted file's issue name for a label finding
LABEL_COLUMNS = ["source", "split", "given_label", "suggested_label", "score", "reason"]
IMAGE_COLUMNS = ["source", "issue", "value", "threshold"]
CHUNK = 4096  # rows per feature-extraction chunk: memory stays bounded at 100,000 photos


def penultimate_features(model: keras.Model, splits: list, batch_size: int) -> np.ndarray:
    """What the network's last layer sees (its input: the pooled, dense features), for every row of
    each (lazy) image array in ``splits``, in order."""
    extractor = keras.Model(model.inputs, model.layers[-1].input)
    parts = []
    for images in splits:
        for start in range(0, len(images), CHUNK):
            chunk = np.asarray(images[start : start + CHUNK])
            parts.append(np.asarray(extractor.predict(chunk, batch_size=batch_size, verbose=0), dtype=np.float32))
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(parts).reshape(sum(len(p) for p in parts), -1)


def read_accepted(path: Path) -> pd.DataFrame:
    """The findings a person looked at and keeps: columns ``source`` and ``issue`` (empty: every
    finding of that file). A missing file accepts nothing."""
    if not path.exists():
        return pd.DataFrame(columns=["source", "issue"])
    if not path.is_file():
        raise PipelineError(f"{path} (audit.accepted) is not a file: name a CSV, such as data/raw/audit_accepted.csv")
    try:  # index_col=False: a trailing comma on every row (spreadsheets) must not shift the columns
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, index_col=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, OSError) as error:
        raise PipelineError(f"{path} (audit.accepted) is not a readable CSV: {str(error).splitlines()[0]}") from error
    table.columns = [str(c).strip().lower() for c in table.columns]
    if "source" not in table.columns:
        raise PipelineError(f"{path} (audit.accepted) has no 'source' column: one row per file, as the audit names it")
    if "issue" not in table.columns:
        table["issue"] = ""
    table["source"], table["issue"] = table["source"].str.strip(), table["issue"].str.strip()
    if (empty := table.index[table["source"] == ""]).size:
        raise PipelineError(
            f"{path} (audit.accepted): row {int(empty[0]) + 2} has no source (the file, as the audit names it)"
        )
    unknown = sorted(set(table["issue"]) - {"", LABEL_ISSUE, *ISSUES})
    if unknown:
        raise PipelineError(
            f"{path} (audit.accepted): unknown issue {unknown[0]!r}; use {LABEL_ISSUE!r}, one of {', '.join(ISSUES)}, or leave it empty"
        )
    return table[["source", "issue"]]


def unmatched_accepted(accepted: pd.DataFrame, sources: pd.Series) -> list[str]:
    """Accepted rows that name no file of the dataset: a typo, or a file since removed."""
    known = set(sources)
    return [source for source in accepted["source"] if source not in known]


def drop_accepted(findings: pd.DataFrame, issue: pd.Series | str, accepted: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``findings`` without those the accepted table covers, and how many it covered."""
    if findings.empty or accepted.empty:
        return findings, 0
    issues = pd.Series(issue, index=findings.index) if isinstance(issue, str) else issue
    whole = set(accepted.loc[accepted["issue"] == "", "source"])
    pairs = set(zip(accepted["source"], accepted["issue"], strict=True))
    covered = [
        source in whole or (source, name) in pairs for source, name in zip(findings["source"], issues, strict=True)
    ]
    covered = np.asarray(covered, dtype=bool)
    return findings[~covered].reset_index(drop=True), int(covered.sum())


TOO_MANY = 0.25  # flagged share above which the findings say more about the network than the labels


HEADLINE = ("label_issues", "images_with_issues", "oof_accuracy")


def headline(summary: dict) -> dict:
    """The DVC metric: three numbers, because DESIGN keeps the metrics a headline (`dvc exp show` gets a
    column per key, beside train's and evaluate's); the per-issue counts stay in the detail file."""
    return {key: summary[key] for key in HEADLINE}


def flagged_share(summary: dict) -> float:
    """The share of the scored images flagged as likely label errors."""
    return summary["label_issues"] / summary["audited_images"] if summary["audited_images"] else 0.0


def weak_features_warning(summary: dict) -> str | None:
    """What to say when so many images are flagged that the network, not the labels, is the likely cause."""
    rate = flagged_share(summary)
    if rate <= TOO_MANY:
        return None
    return (
        f"{rate:.0%} of the labelled images flagged (out-of-fold accuracy "
        f"{summary['oof_accuracy']:.2f}): the network's features hardly separate the classes, so "
        "these findings mostly show its confusion, not wrong labels; train a better model first "
        "(reports/eval/summary.md) and audit again"
    )


def summary(
    label_issues: pd.DataFrame,
    image_issues: pd.DataFrame,
    audited: int,
    measured: int,
    accepted: int,
    out_of_fold_accuracy: float,
) -> dict:
    """Every count the audit makes, flat numbers with short names: the report and MLflow read this, and
    ``headline`` picks the few that become the DVC metric."""
    counts = image_issues["issue"].value_counts()
    return {
        "audited_images": int(audited),
        "oof_accuracy": round(float(out_of_fold_accuracy), 4),
        "label_issues": len(label_issues),
        "measured_images": int(measured),
        "images_with_issues": int(image_issues["source"].nunique()),
        **{name: int(counts.get(name, 0)) for name in ISSUES},
        "accepted": int(accepted),
    }
