"""The audit as a page a person acts on: the flagged images, their given and suggested labels side by
side, and what to do about each. One self-contained HTML file (thumbnails inlined as PNG data URLs,
no script, no request leaves the page), so it opens offline, from MLflow's artifact view or a CI
artifact alike."""

from __future__ import annotations

import base64
import html

import cv2
import numpy as np
import pandas as pd

from imgclf.data.quality import ISSUES
from imgclf.evaluate.audit import weak_features_warning

THUMBNAIL = 128  # pixels, longest side

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #1d1d1f; padding: 0 16px }
h1 { font-size: 22px } h2 { font-size: 18px; margin-top: 32px }
table { border-collapse: collapse; width: 100% } td, th { border-bottom: 1px solid #ddd; padding: 6px 8px; text-align: left; vertical-align: middle }
th { background: #f5f5f7 } img { image-rendering: auto; border: 1px solid #ccc; max-width: 128px; max-height: 128px; min-width: 64px }
.given { color: #b3261e; font-weight: 600 } .suggested { color: #146c2e; font-weight: 600 }
.counts td:first-child { width: 260px } code { background: #f5f5f7; padding: 1px 4px; border-radius: 3px }
.note { color: #555 } .warning { background: #fff4e5; border-left: 4px solid #e8a317; padding: 8px 12px } .reason { color: #555; font-size: 12px }
"""


def thumbnail_uri(image: np.ndarray) -> str:
    """A PNG data URL of ``image`` (uint8, (H, W) or (H, W, C) RGB), at most THUMBNAIL pixels a side;
    small images are enlarged by the browser (CSS min-width), not here."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    height, width = image.shape[:2]
    scale = THUMBNAIL / max(height, width)
    if scale < 1:
        image = cv2.resize(
            image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
        )
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, png = cv2.imencode(".png", bgr)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 array
        return ""
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def _img(uri: str) -> str:
    return f'<img src="{uri}" alt="">' if uri else ""


def render(
    summary: dict,
    label_issues: pd.DataFrame,
    image_issues: pd.DataFrame,
    thumbnails: dict[str, str],
    accepted_file: str,
    gallery: int,
) -> str:
    """The page: counts, how to act, then the top ``gallery`` label issues and image issues.

    ``thumbnails`` maps a ``source`` to its data URL (only the rows shown need one).
    """
    esc = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Data audit</title><style>{STYLE}</style></head><body>",
        "<h1>Data audit: likely label errors and problem images</h1>",
        f"<p class='note'>{summary['audited_images']} labelled images (train and validation) scored out of fold "
        f"(out-of-fold accuracy {summary['oof_accuracy']:.3f}); "
        f"{summary['measured_images']} images measured. The audit never changes your files: it points, you decide.</p>",
    ]
    if warning := weak_features_warning(summary):
        parts.append(f"<p class='warning'><b>Read with care:</b> {esc(warning)}.</p>")
    parts.append("<table class='counts'>")
    rows = [
        ("likely label errors", summary["label_issues"]),
        ("images with an image issue", summary["images_with_issues"]),
    ]
    rows += [(name.replace("_", " "), summary[name]) for name in ISSUES if summary.get(name)]
    rows.append((f"findings skipped as accepted ({esc(accepted_file)})", summary["accepted"]))
    parts += [f"<tr><td>{esc(str(name))}</td><td><b>{value}</b></td></tr>" for name, value in rows]
    parts += [
        "</table>",
        "<h2>How to act</h2><ol>",
        "<li><b>A wrong label</b>: move the file into the folder of its right class (class-folder layout) "
        "or fix its row in your CSV (CSV layout), then <code>dvc add data/raw/&lt;your folder&gt;</code> and "
        "<code>dvc repro</code>. The model retrains and the flagged count falls "
        "(<code>dvc metrics diff</code> shows it).</li>",
        "<li><b>A bad image</b> (blurred, too dark, blank, a duplicate under two labels): delete it or "
        "replace it, the same way.</li>",
        f"<li><b>Right as it is</b>: add a row to <code>{esc(accepted_file)}</code> with its <code>source</code> "
        "and, to skip only one finding, its <code>issue</code> (<code>label</code> or an image issue's name); "
        "the next audit leaves it out.</li></ol>",
    ]
    shown = label_issues.head(gallery)
    parts.append(f"<h2>Likely label errors: the {len(shown)} most likely of {len(label_issues)}</h2>")
    if len(shown):
        parts.append(
            "<table><tr><th>#</th><th>image</th><th>file (source)</th><th>split</th><th>given label</th>"
            "<th>suggested label</th><th>score</th></tr>"
        )
        for rank, row in enumerate(shown.itertuples(index=False), start=1):
            parts.append(
                f"<tr><td>{rank}</td><td>{_img(thumbnails.get(row.source, ''))}</td>"
                f"<td><code>{esc(str(row.source))}</code><div class='reason'>{esc(str(row.reason))}</div></td>"
                f"<td>{esc(str(row.split))}</td><td class='given'>{esc(str(row.given_label))}</td>"
                f"<td class='suggested'>{esc(str(row.suggested_label))}</td><td>{row.score:.3f}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>None: every labelled image agrees with its label out of fold.</p>")
    parts.append(f"<h2>Image issues ({len(image_issues)})</h2>")
    if len(image_issues):
        parts.append(
            "<table><tr><th>image</th><th>file (source)</th><th>issue</th><th>measured</th><th>threshold</th></tr>"
        )
        for issue, group in image_issues.groupby("issue", sort=True):
            for row in group.head(gallery).itertuples(index=False):
                parts.append(
                    f"<tr><td>{_img(thumbnails.get(row.source, ''))}</td><td><code>{esc(str(row.source))}</code></td>"
                    f"<td>{esc(str(issue)).replace('_', ' ')}</td><td>{row.value:g}</td><td>{row.threshold:g}</td></tr>"
                )
            if len(group) > gallery:
                parts.append(f"<tr><td></td><td colspan='4' class='note'>... and {len(group) - gallery} more "
                             f"{esc(str(issue)).replace('_', ' ')} in image_issues.csv</td></tr>")  # fmt: skip
        parts.append("</table>")
    else:
        parts.append("<p>None.</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
