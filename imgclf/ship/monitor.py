"""Watching the model in production: ``python -m imgclf.monitor`` reads the service's prediction log.

It compares what the service answered with what the same model answered on the test split (the
model card's reference, written at export): how often each class is answered (a chi-square
goodness-of-fit test), how confident the answers are (a chi-square test on the two histograms of
the top probability), how many are called unknown; and what people said (accuracy on feedback,
with its Wilson interval). ``reports/monitor/summary.json`` holds the figures and the alerts,
``reports/monitor/report.html`` the plots (offline). An alert is a threshold in params' ``monitor``
section crossed; the command then exits 1, so cron or CI can page someone (2: it could not run).

Rows that cannot be read (a label the model does not have, a probability outside 0..1: a corrupt
or foreign row) are skipped, counted and named in the summary, never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from imgclf.io import PipelineError, read_json, write_json, write_text
from imgclf.ship.prediction_log import read

log = logging.getLogger(__name__)
ALERT_EXIT, ERROR_EXIT = 1, 2


def read_log(path: Path, labels: list[str], since: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The log's predictions (rows that make sense for this model) and latest feedback per prediction,
    and a line for each row skipped."""
    columns = ["id", "time", "model", "variant", "label", "probability", "unknown", "unknown_score"]
    predictions = pd.DataFrame(read(path, f"SELECT {', '.join(columns)} FROM predictions"), columns=columns)
    columns = ["prediction_id", "label", "outcome", "time"]
    feedback = pd.DataFrame(read(path, f"SELECT {', '.join(columns)} FROM feedback ORDER BY id"), columns=columns)
    skipped = []
    probability = pd.to_numeric(predictions["probability"], errors="coerce")
    stamp = pd.to_numeric(predictions["time"], errors="coerce")
    bad = ~predictions["label"].isin(labels) | ~probability.between(0.0, 1.0) | stamp.isna()
    for row in predictions[bad].head(20).itertuples():
        skipped.append(f"prediction {row.id}: label {row.label!r}, probability {row.probability!r}")
    if bad.sum() > 20:
        skipped.append(f"... and {int(bad.sum()) - 20} more")
    predictions = predictions[~bad].assign(probability=probability[~bad], time=stamp[~bad])
    if since is not None:
        predictions = predictions[predictions["time"] >= since]
    feedback = feedback[feedback["prediction_id"].isin(predictions["id"]) & feedback["label"].isin(labels)]
    feedback = feedback.drop_duplicates("prediction_id", keep="last")  # a person's latest word counts
    return predictions.reset_index(drop=True), feedback.reset_index(drop=True), skipped


def _wilson(successes: int, total: int) -> list[float]:
    from scipy.stats import binomtest

    interval = binomtest(successes, total).proportion_ci(confidence_level=0.95, method="wilson")
    return [round(interval.low, 4), round(interval.high, 4)]


def summarize(
    predictions: pd.DataFrame, feedback: pd.DataFrame, reference: dict, labels: list[str], params: dict
) -> dict:
    """The figures and the alerts (``params``: the ``monitor`` section)."""
    from scipy.stats import chi2_contingency, chisquare

    from imgclf.ship.export import PROBABILITY_BINS

    count = len(predictions)
    summary: dict = {"requests": count, "alerts": []}
    if count:
        summary["first"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(predictions["time"].min()))
        summary["last"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(predictions["time"].max()))
    judged = predictions["unknown"].dropna()
    summary["unknown_rate"] = round(float(judged.mean()), 4) if len(judged) else None
    summary["reference_unknown_rate"] = reference.get("test_unknown_rate")

    answered = predictions["label"].value_counts().reindex(labels, fill_value=0).to_numpy()
    expected_counts = np.asarray(reference.get("test_answers") or [], dtype=float)
    summary["class_distribution"] = {
        label: {"production": int(answered[i]),
                "test_share": round(float(expected_counts[i] / expected_counts.sum()), 4) if expected_counts.sum() else None}
        for i, label in enumerate(labels)
    }  # fmt: skip
    enough = count >= int(params["min_requests"])
    if count and len(expected_counts) == len(labels) and expected_counts.sum():
        # +0.5 on the reference: a class the test split never got answered must not make the test infinite
        shares = (expected_counts + 0.5) / (expected_counts + 0.5).sum()
        test = chisquare(answered, shares * count)
        summary["class_shift"] = {"chi2": round(float(test.statistic), 3), "p_value": float(f"{test.pvalue:.3g}")}
    top = predictions["probability"].to_numpy()
    histogram = np.histogram(top, bins=PROBABILITY_BINS, range=(0.0, 1.0))[0]
    reference_histogram = np.asarray(reference.get("test_probability_histogram") or [], dtype=float)
    summary["mean_probability"] = round(float(top.mean()), 4) if count else None
    if count and len(reference_histogram) == PROBABILITY_BINS and reference_histogram.sum():
        table = np.stack([histogram, reference_histogram])
        table = table[:, table.sum(axis=0) > 0]
        statistic, p_value, *_ = chi2_contingency(table) if table.shape[1] > 1 else (0.0, 1.0)
        summary["confidence_shift"] = {"chi2": round(float(statistic), 3), "p_value": float(f"{p_value:.3g}")}
        centres = (np.arange(PROBABILITY_BINS) + 0.5) / PROBABILITY_BINS
        summary["reference_mean_probability"] = round(
            float((reference_histogram * centres).sum() / reference_histogram.sum()), 4
        )

    correct = int((feedback["outcome"] == "correct").sum())
    summary["feedback"] = {"answers": len(feedback), "correct": correct, "corrected": len(feedback) - correct}
    if len(feedback):
        summary["feedback"]["accuracy"] = round(correct / len(feedback), 4)
        summary["feedback"]["accuracy_ci95"] = _wilson(correct, len(feedback))

    alerts = summary["alerts"]
    if not enough:
        summary["note"] = (
            f"{count} answers < monitor.min_requests ({params['min_requests']}): no distribution alerts yet"
        )
    if enough and summary["unknown_rate"] is not None and summary["unknown_rate"] > params["max_unknown_rate"]:
        alerts.append(f"unknown rate {summary['unknown_rate']:.1%} > monitor.max_unknown_rate {params['max_unknown_rate']:.1%} "
                      f"(test split: {_percent(summary['reference_unknown_rate'])}): inputs unlike the training data")  # fmt: skip
    if enough and "class_shift" in summary and summary["class_shift"]["p_value"] < params["class_shift_p"]:
        alerts.append(f"the answered classes differ from the test split's (chi-square p {summary['class_shift']['p_value']:.2g} "
                      f"< monitor.class_shift_p {params['class_shift_p']:g})")  # fmt: skip
    if (
        enough
        and "confidence_shift" in summary
        and summary["confidence_shift"]["p_value"] < params["confidence_shift_p"]
    ):
        alerts.append(f"confidence differs from the test split's (mean {summary['mean_probability']:.3f} vs "
                      f"{summary['reference_mean_probability']:.3f}, p {summary['confidence_shift']['p_value']:.2g})")  # fmt: skip
    fb = summary["feedback"]
    if fb["answers"] >= int(params["min_feedback"]) and fb["accuracy"] < params["min_feedback_accuracy"]:
        alerts.append(f"accuracy on feedback {fb['accuracy']:.1%} (95% CI {fb['accuracy_ci95'][0]:.1%}..{fb['accuracy_ci95'][1]:.1%}, "
                      f"{fb['answers']} answers) < monitor.min_feedback_accuracy {params['min_feedback_accuracy']:.0%}")  # fmt: skip
    return summary


def _figure_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def plots(predictions: pd.DataFrame, summary: dict, reference: dict) -> list[tuple[str, str]]:
    """(title, data URL) for each plot: classes, confidence, answers and unknown rate by day."""
    import matplotlib
    import matplotlib.dates

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from imgclf.ship.export import PROBABILITY_BINS

    figures = []
    labels = list(summary["class_distribution"])
    production = np.array([summary["class_distribution"][k]["production"] for k in labels], dtype=float)
    test_share = [summary["class_distribution"][k]["test_share"] or 0.0 for k in labels]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    positions = np.arange(len(labels))
    ax.bar(positions - 0.2, production / max(production.sum(), 1), 0.4, label="production")
    ax.bar(positions + 0.2, test_share, 0.4, label="test split")
    ax.set_xticks(positions, labels, rotation=30, ha="right")
    ax.set_ylabel("share of answers")
    ax.legend()
    figures.append(("Answers by class", _figure_uri(fig)))

    fig, ax = plt.subplots(figsize=(8, 3))
    edges = np.linspace(0, 1, PROBABILITY_BINS + 1)
    reference_histogram = np.asarray(reference.get("test_probability_histogram") or np.zeros(PROBABILITY_BINS), float)
    ax.hist(predictions["probability"], bins=edges, density=True, alpha=0.6, label="production")
    if reference_histogram.sum():
        ax.stairs(
            reference_histogram / reference_histogram.sum() * PROBABILITY_BINS, edges, label="test split", linewidth=2
        )
    ax.set_xlabel("top probability")
    ax.legend()
    figures.append(("Confidence", _figure_uri(fig)))

    if len(predictions):
        days = pd.to_datetime(predictions["time"], unit="s").dt.floor("D")
        daily = predictions.assign(day=days).groupby("day").agg(answers=("id", "size"), unknown=("unknown", "mean"))
        fig, ax = plt.subplots(figsize=(8, 3))
        ax.bar(daily.index, daily["answers"], width=0.8, color="#bbb", label="answers")
        ax.set_ylabel("answers per day")
        twin = ax.twinx()
        twin.plot(daily.index, daily["unknown"], "o-", color="#c47f00", label="unknown rate")
        twin.set_ylabel("unknown rate")
        twin.set_ylim(0, 1)
        ax.xaxis.set_major_locator(matplotlib.dates.AutoDateLocator(minticks=1, maxticks=10))
        ax.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%Y-%m-%d"))
        if len(daily) == 1:  # one day: a single bar, centred, not a day's worth of hour ticks
            day = daily.index[0]
            ax.set_xlim(day - pd.Timedelta(days=2), day + pd.Timedelta(days=2))
        figures.append(("Over time", _figure_uri(fig)))
    return figures


def render(summary: dict, figures: list[tuple[str, str]], log_path: Path) -> str:
    """The report: alerts first, the figures, the plots (inlined: it renders offline)."""
    esc = html.escape
    alerts = "".join(f"<li>{esc(a)}</li>" for a in summary["alerts"])
    head = (f"<div class='alert'><b>{len(summary['alerts'])} alert(s)</b><ul>{alerts}</ul></div>" if alerts
            else "<div class='ok'>No alert.</div>")  # fmt: skip
    fb = summary["feedback"]
    rows = [
        ("answers", summary["requests"]),
        ("period (UTC)", f"{summary.get('first', '-')} .. {summary.get('last', '-')}"),
        ("model", f"{summary.get('model')} ({summary.get('variant')}); {summary.get('other_rows', 0)} rows of other models or variants not judged"),
        ("called unknown", _percent(summary["unknown_rate"]) + f" (test split {_percent(summary['reference_unknown_rate'])})"),
        ("answered classes vs test split", _test(summary.get("class_shift"))),
        ("mean top probability", f"{summary['mean_probability']} (test split {summary.get('reference_mean_probability', '-')}); "
                                 + _test(summary.get("confidence_shift"))),
        ("feedback", f"{fb['answers']} answers: {fb['correct']} confirmed, {fb['corrected']} corrected"),
        ("accuracy on feedback", f"{_percent(fb.get('accuracy'))} (95% CI {', '.join(_percent(x) for x in fb.get('accuracy_ci95', []))})"
                                 if fb["answers"] else "-"),
        ("rows skipped", len(summary["skipped_rows"])),
    ]  # fmt: skip
    table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in rows)
    images = "".join(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='{uri}'>" for title, uri in figures)
    note = f"<p class='note'>{esc(summary['note'])}</p>" if summary.get("note") else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>imgclf monitor</title>
<style>body{{font:15px/1.4 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}
th{{text-align:left;padding:.2rem 1rem .2rem 0;color:#555;font-weight:500}} img{{max-width:100%}}
.alert{{background:#fde2e1;border:1px solid #e0a3a0;padding:.6rem 1rem;border-radius:6px}}
.ok{{background:#e3f4e8;border:1px solid #a4d4b2;padding:.6rem 1rem;border-radius:6px}} .note{{color:#666}}</style>
</head><body><h1>Monitor: {esc(str(log_path))}</h1>{head}{note}<table>{table}</table>{images}</body></html>"""


def _percent(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1%}"


def _test(result: dict | None) -> str:
    return "not enough data" if not result else f"chi-square {result['chi2']}, p {result['p_value']:.3g}"


def run(
    log_path: Path, card_path: Path, variant: str, params: dict, out: tuple[Path, Path], days: float | None
) -> dict:
    card = read_json(card_path)
    labels = list(card["labels"])
    reference = (card.get("unknown") or {}).get("variants", {}).get(variant)
    if reference is None:
        raise PipelineError(
            f"{card_path}: no reference for variant {variant!r} (export-tflite writes it): rerun the export"
        )
    since = time.time() - days * 86400 if days else None
    predictions, feedback, skipped = read_log(log_path, labels, since)
    # judge one model: the variant asked for, and of it the model served last (a log outlives redeploys)
    judged = predictions[predictions["variant"] == variant]
    model = judged.loc[judged["time"].idxmax(), "model"] if len(judged) else None
    judged = judged[judged["model"] == model]
    feedback = feedback[feedback["prediction_id"].isin(judged["id"])]
    summary = summarize(judged.reset_index(drop=True), feedback, reference, labels, params)
    summary["skipped_rows"] = skipped
    summary["variant"], summary["model"] = variant, model
    summary["other_rows"] = len(predictions) - len(judged)  # other variants or earlier models: not judged here
    write_json(out[0], summary)
    write_text(out[1], render(summary, plots(predictions, summary, reference), log_path))
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m imgclf.monitor``: exit 0 (no alert), 1 (an alert fired), 2 (it could not run)."""
    from imgclf.params import load_section
    from imgclf.paths import layout

    parser = argparse.ArgumentParser(prog="python -m imgclf.monitor", description=__doc__.splitlines()[0])
    parser.add_argument("--log", help="the prediction log (default: serve.log in params.yaml)")
    parser.add_argument("--variant", help="the variant served (default: serve.variant)")
    parser.add_argument("--card", help="the model card (default: models/tflite/model_card.json)")
    parser.add_argument("--days", type=float, help="only the last N days (default: monitor.days)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    paths = layout(Path.cwd())
    try:
        serve, params = load_section("serve"), load_section("monitor")
        log_path = Path(args.log or serve["log"] or "")
        if not (args.log or serve["log"]):
            raise PipelineError("no prediction log: serve.log is null in params.yaml; pass --log")
        card = Path(args.card) if args.card else paths.tflite_meta
        summary = run(log_path, card, args.variant or serve["variant"], params,
                      (paths.monitor_summary, paths.monitor_report), args.days or params["days"])  # fmt: skip
    except PipelineError as error:
        print(f"imgclf.monitor: error: {error}", file=sys.stderr)
        return ERROR_EXIT
    print(f"{summary['requests']} answers, unknown {_percent(summary['unknown_rate'])}, "
          f"feedback {summary['feedback']['answers']}; {paths.monitor_report}")  # fmt: skip
    for skipped in summary["skipped_rows"][:3]:
        log.warning("skipped %s", skipped)
    for alert in summary["alerts"]:
        log.error("ALERT: %s", alert)
    return ALERT_EXIT if summary["alerts"] else 0
