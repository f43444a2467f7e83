"""``python -m imgclf.ui``: the MLflow UI on a store like ours opens, in a fresh browser, on the runs
table sorted by test accuracy with its column shown (a saved view the entry point writes)."""

from __future__ import annotations

import json
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest

from imgclf.paths import REPO_ROOT

LINK = re.compile(
    r"http://127\.0\.0\.1:(?P<port>\d+)/#/experiments/(?P<experiment>\d+)/runs"
    r"\?viewStateShareKey=imgclf-headline-metrics&workflowType=machine_learning"
)


def ui(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "imgclf.ui", *args],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


class Output:
    """A process's output lines, read by one thread, so that a test waits for a line with a deadline."""

    def __init__(self, process: subprocess.Popen):
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # end of output: the process exited

    def next(self, timeout_s: float) -> str | None:
        try:
            line = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout_s} s after:\n" + "\n".join(self.seen)) from None
        if line is not None:
            self.seen.append(line)
        return line

    def link(self, timeout_s: float) -> str:
        """The first line that is a link."""
        while (line := self.next(timeout_s)) is not None:
            if line.startswith("http"):
                return line
        raise AssertionError("the UI exited without a link:\n" + "\n".join(self.seen))

    def rest(self, timeout_s: float) -> list[str]:
        """The lines up to the end of the output."""
        rest = []
        while (line := self.next(timeout_s)) is not None:
            rest.append(line)
        return rest


def test_a_busy_port_is_a_one_line_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = ui("--port", str(port))
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert output.strip().splitlines() == [output.strip()]
    assert f"port {port} on 127.0.0.1 is in use" in output


@pytest.mark.slow
def test_the_link_opens_the_runs_table_with_test_accuracy(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from imgclf.team import tracking
    from imgclf.team.ui import VIEW_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the subprocess's store too
    monkeypatch.delenv("DVC_ROOT", raising=False)
    experiment_id = tracking.configure(tmp_path, "imgclf")
    run_name = "simple_cnn lr=0.001 batch=64"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name):
        mlflow.log_metrics({"test_accuracy": 0.9311, "test_macro_f1": 0.9309, "test_log_loss": 0.2546})
        mlflow.log_metrics({"test_ece": 0.0615, "baseline_accuracy": 0.803, "val_accuracy": 0.9341})

    process = ui("--port", "0", "--experiment", "imgclf")
    output = Output(process)
    try:
        link = output.link(timeout_s=180)
        match = LINK.fullmatch(link)
        assert match, link
        assert match["experiment"] == experiment_id
        assert output.seen[-2].startswith(f"MLflow UI on {uri} ")
        chromium = shutil.which("chromium")
        if chromium:
            opened_in_chromium(link, run_name, tmp_path / "profile", chromium)
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        process.wait(timeout=60)
    rest = output.rest(timeout_s=10)
    assert process.returncode == 0, output.seen
    assert "stopping" in rest and not any("Traceback" in line for line in rest), output.seen
    with pytest.raises(OSError):  # the server stopped with it
        socket.create_connection(("127.0.0.1", int(match["port"])), timeout=5).close()
    view = json.loads(MlflowClient(uri).get_experiment(experiment_id).tags[VIEW_TAG])
    assert view["name"] == "Headline metrics"
    assert json.loads(view["state"])["orderByKey"] == "metrics.`test_accuracy`"
    if not chromium:
        pytest.skip("chromium is not installed: the link was checked, not opened")


def opened_in_chromium(link: str, run_name: str, profile, chromium: str) -> None:
    """A fresh profile (nothing in its localStorage) sees the run and the test_accuracy column."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, viewport={"width": 1600, "height": 900}
        )
        try:
            page = browser.new_page()
            page.goto(link)
            header = page.get_by_role("columnheader", name="test_accuracy", exact=True).first
            sync_api.expect(header).to_be_visible(timeout=120_000)
            sync_api.expect(page.get_by_role("link", name=run_name)).to_be_visible(timeout=60_000)
            sync_api.expect(page.get_by_role("gridcell", name="0.9311")).to_be_visible(timeout=60_000)
            sync_api.expect(page).to_have_url(re.compile(r"orderByKey=metrics\.%60test_accuracy%60"))
        finally:
            browser.close()
