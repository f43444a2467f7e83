"""`dvc plots show` / `dvc plots diff` render offline: the project's HTML template (`plots.html_template` in
.dvc/config, built by scripts/build_plots_template.py) inlines vega, vega-lite and vega-embed, so the
vega-lite plots (confusion matrix, loss curves, ROC, calibration) appear without a network.

A throwaway git + DVC project with plots of this repository's kinds renders its pages, and headless
Chromium opens them with every request that is not a local file aborted."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from tests.conftest import run

ROOT = Path(__file__).resolve().parent.parent
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")

DVC_YAML = """\
plots:
  - confusion:
      template: confusion
      x: predicted
      y:
        reports/eval/predictions.csv: actual
  - loss:
      x: epoch
      y:
        reports/train/history.csv: [loss, val_loss]
  - roc:
      template: simple
      x: fpr
      y:
        reports/eval/roc.csv: tpr
  - calibration:
      template: simple
      x: confidence
      y:
        reports/eval/calibration.csv: accuracy
  - reports/preview.png
"""
VEGA_PLOTS = {"confusion", "loss", "roc", "calibration"}
POINTS = {"roc": 11, "calibration": 10}  # rows of each file: one point each per revision shown

# Runs before the page's own scripts: wraps vegaEmbed once vega-embed defines it, and records for each
# plot whether its promise resolved and how many data marks (not axes or legends) the view drew.
INSTRUMENT = """
(() => {
  window.__plots = [];
  const marks = (mark) => {
    let n = mark.marktype !== 'group' && mark.role === 'mark' ? mark.items.length : 0;
    for (const item of mark.items || []) for (const child of item.items || []) n += marks(child);
    return n;
  };
  let embed;
  Object.defineProperty(window, 'vegaEmbed', {
    configurable: true,
    get: () => embed,
    set: (real) => {
      embed = Object.assign((el, spec, opts) => {
        const done = real(el, spec, opts);
        done.then(
          (result) => window.__plots.push({el, marks: marks(result.view.scenegraph().root)}),
          (error) => window.__plots.push({el, error: String(error)}),
        );
        return done;
      }, real);
    },
  });
})();
"""

# Each plot's element once drawn: vega-embed's class and a canvas or svg with an area.
DRAWN = """
(ids) => ids.map((id) => {
  const el = document.getElementById(id);
  const graphic = el && el.querySelector('canvas, svg');
  const box = graphic && graphic.getBoundingClientRect();
  return {id, embedded: !!el && el.classList.contains('vega-embed'), width: box ? box.width : 0,
          height: box ? box.height : 0};
})
"""


def project_template_setting() -> str:
    """`plots.html_template` as .dvc/config sets it (relative: DVC resolves it against .dvc/)."""
    from configobj import ConfigObj

    return ConfigObj(str(ROOT / ".dvc" / "config"))["plots"]["html_template"]


def png(rgb: tuple[int, int, int], size: int = 16) -> bytes:
    """A small one-colour PNG (stdlib only)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def write_data(root: Path, version: int) -> None:
    """The plots' files; version 2 holds other numbers than version 1 (for `dvc plots diff`)."""
    (root / "reports" / "eval").mkdir(parents=True, exist_ok=True)
    (root / "reports" / "train").mkdir(parents=True, exist_ok=True)
    classes = ["bird", "cat", "dog"]
    rows = [
        f"{actual},{classes[(i + k) % 3] if k % (3 + version) == 0 else actual}"
        for i, actual in enumerate(classes)
        for k in range(12)
    ]
    (root / "reports/eval/predictions.csv").write_text("actual,predicted\n" + "\n".join(rows) + "\n")
    history = [
        f"{e},{1.5 / (e + version):.4f},{1.7 / (e + version):.4f},{1 - 0.4 / (e + 1):.4f},{1 - 0.5 / (e + 1):.4f}"
        for e in range(6)
    ]
    (root / "reports/train/history.csv").write_text(
        "epoch,loss,val_loss,accuracy,val_accuracy\n" + "\n".join(history) + "\n"
    )
    roc = [f"{f / 10:.1f},{min(1.0, (f / 10) ** (1 / (2 + version))):.4f}" for f in range(11)]
    (root / "reports/eval/roc.csv").write_text("fpr,tpr\n" + "\n".join(roc) + "\n")
    calibration = [f"{(b + 0.5) / 10:.2f},{min(1.0, (b + 0.5) / 10 * (0.8 + 0.1 * version)):.4f}" for b in range(10)]
    (root / "reports/eval/calibration.csv").write_text("confidence,accuracy\n" + "\n".join(calibration) + "\n")
    (root / "reports/preview.png").write_bytes(png((40 * version, 120, 200)))


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """The pages of a throwaway project: DVC's default one, then `dvc plots show` and `dvc plots diff
    HEAD` with the project's template set as this repository sets it."""
    root = tmp_path_factory.mktemp("plots") / "project"
    root.mkdir()
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "config", "user.name", "test"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    (root / "dvc.yaml").write_text(DVC_YAML)
    write_data(root, 1)
    run(["git", "add", "."], root)
    run(["git", "commit", "-qm", "first results"], root)
    write_data(root, 2)

    out = root.parent
    run(["dvc", "plots", "show", "-o", str(out / "default")], root)  # before the template is set

    setting = project_template_setting()
    (root / ".dvc" / setting).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / ".dvc" / setting, root / ".dvc" / setting)
    run(["dvc", "config", "plots.html_template", setting], root)
    run(["dvc", "plots", "show", "-o", str(out / "show")], root)
    run(["dvc", "plots", "diff", "HEAD", "-o", str(out / "diff")], root)
    return {name: out / name / "index.html" for name in ("default", "show", "diff")}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium and (os.geteuid() != 0 or not shutil.which("apt-get")):
        pytest.skip("Debian's chromium is not installed and apt is unavailable to install it")
    assert chromium, "Debian's chromium is not installed: `make test-tools` installs it"
    with sync_playwright() as playwright:
        # a proxy nobody listens on: a request that got past the route below would fail too
        browser = playwright.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"],
        )
        try:
            yield browser
        finally:
            browser.close()


def open_offline(browser, page_path: Path, expected_plots: int | None):
    """Open ``page_path`` with every non-local request aborted; once ``expected_plots`` vega plots have
    settled (or, for None, the page has loaded), return what the page did."""
    page = browser.new_page()
    seen = {"requests": [], "blocked": [], "errors": []}

    def gate(route):
        url = route.request.url
        if url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:
            seen["blocked"].append(url)
            route.abort()

    page.route("**/*", gate)
    page.on("request", lambda request: seen["requests"].append(request.url))
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))
    page.on("console", lambda message: message.type == "error" and seen["errors"].append(message.text))
    page.add_init_script(INSTRUMENT)
    page.goto(page_path.as_uri(), wait_until="load")
    if expected_plots is not None:
        page.wait_for_function("(n) => window.__plots.length >= n", arg=expected_plots, timeout=60_000)
        page.wait_for_function("() => [...document.images].every((img) => img.complete)", timeout=60_000)
    seen["plots"] = page.evaluate("window.__plots")
    seen["drawn"] = page.evaluate(DRAWN, sorted(VEGA_PLOTS))
    seen["images"] = page.evaluate("[...document.images].map((img) => [img.getAttribute('src'), img.naturalWidth])")
    page.close()
    return seen


def remote_script_tags(html: str) -> list[str]:
    return re.findall(r"<script\b[^>]*\bsrc\s*=[^>]*>", html, flags=re.IGNORECASE)


def test_the_template_is_committed_self_contained_and_names_its_pinned_packages():
    setting = project_template_setting()
    template = ROOT / ".dvc" / setting
    html = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in html and "{scripts}" not in html  # DVC's CDN tags have nowhere to go
    assert remote_script_tags(html) == []
    assert not re.search(r"<link\b[^>]*href\s*=\s*[\"']?https?://", html, flags=re.IGNORECASE)
    ignored = subprocess.run(["git", "check-ignore", "-q", str(template)], cwd=ROOT)
    assert ignored.returncode == 1, f"{template} is git-ignored: a fresh clone would lack it"

    spec = importlib.util.spec_from_file_location("build_plots_template", ROOT / "scripts" / "build_plots_template.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert build.TEMPLATE == template
    licences = build.LICENSES.read_text(encoding="utf-8")
    for name, (version, _, _) in build.PINNED.items():
        assert f"<script>/* {name} {version}, " in html
        assert f"\n{name} {version} (" in licences
    for name, (version, _) in build.BUNDLED.items():
        assert f"\n{name} {version} (" in licences


def test_dvc_default_page_needs_the_network(browser, pages):
    """The control: without the template, the same page loads its scripts from a CDN and draws nothing."""
    assert len(remote_script_tags(pages["default"].read_text(encoding="utf-8"))) == 3
    seen = open_offline(browser, pages["default"], expected_plots=None)
    assert len(seen["blocked"]) == 3 and all("cdn.jsdelivr.net" in url for url in seen["blocked"])
    assert seen["plots"] == [] and not any(d["embedded"] for d in seen["drawn"])
    assert any("vegaEmbed" in error for error in seen["errors"])


@pytest.mark.parametrize("kind, revisions", [("show", 1), ("diff", 2)])
def test_every_plot_renders_with_the_network_blocked(browser, pages, kind, revisions):
    html = pages[kind].read_text(encoding="utf-8")
    assert remote_script_tags(html) == []
    embedded = set(re.findall(r"vegaEmbed\('#([^']+)'", html))
    assert embedded == VEGA_PLOTS

    seen = open_offline(browser, pages[kind], expected_plots=len(VEGA_PLOTS))

    assert seen["blocked"] == []
    assert [url for url in seen["requests"] if not url.startswith(LOCAL_SCHEMES)] == []
    assert seen["errors"] == []
    assert sorted(plot["el"] for plot in seen["plots"]) == sorted(f"#{p}" for p in VEGA_PLOTS)
    for plot in seen["plots"]:
        assert "error" not in plot, plot
        assert plot["marks"] >= POINTS.get(plot["el"][1:], 1) * revisions, f"{plot['el']} drew too few marks: {plot}"
    for drawn in seen["drawn"]:
        assert drawn["embedded"] and drawn["width"] > 50 and drawn["height"] > 50, drawn
    assert len(seen["images"]) == revisions and all(width > 0 for _, width in seen["images"]), seen["images"]
