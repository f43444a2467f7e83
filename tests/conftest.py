"""Shared fixtures: small real datasets and a throwaway copy of the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from imgclf.data.ingest import FASHION_MNIST_CLASSES, find_fashion_mnist, pixel_sha256
from tests.pipeline_copy import new_repository


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The real Fashion-MNIST files (`make test` installs Debian's dataset-fashion-mnist)."""
    return find_fashion_mnist(download=False)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits (1797 real images) as uint8 0..255."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images * (255 / 16)).round().astype(np.uint8)
    return images, data.target.astype(int)


def manifest_for(images: np.ndarray, labels: list[str], splits: list[str]) -> pd.DataFrame:
    """A manifest in ingest's format for images held in memory."""
    return pd.DataFrame(
        {
            "id": [f"{s}/{i:05d}" for i, s in enumerate(splits)],
            "label": labels,
            "split": splits,
            "source": [f"mem#{i}" for i in range(len(images))],
            "sha256": pixel_sha256(images),
            "index": np.arange(len(images)),
        }
    )


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 IDX file (the format of MNIST and Fashion-MNIST)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture
def digits_idx_dir(tmp_path, digits) -> Path:
    """load_digits written as the four Fashion-MNIST IDX files (28x28, train 1500 / test 297)."""
    import cv2

    images, target = digits
    big = np.stack([cv2.resize(image, (28, 28), interpolation=cv2.INTER_NEAREST) for image in images])
    folder = tmp_path / "digits-idx"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", big[:1500])
    write_idx(folder / "train-labels-idx1-ubyte", target[:1500])
    write_idx(folder / "t10k-images-idx3-ubyte", big[1500:])
    write_idx(folder / "t10k-labels-idx1-ubyte", target[1500:])
    return folder


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(cwd),  # the copy's own package, not the checkout's
    }
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """A fresh git + DVC repository holding the pipeline's code and params, nothing else."""
    return new_repository(tmp_path / "repo")


def epochs_logged(paths) -> int:
    """Rows in the running training's epoch log; a row being written counts when complete."""
    logs = list(paths.train_backup.glob("*/history.csv"))
    try:
        return len(pd.read_csv(logs[0])) if logs and logs[0].stat().st_size else 0
    except (pd.errors.ParserError, pd.errors.EmptyDataError, FileNotFoundError):
        return 0


def kill_training_after_two_epochs(cmd: list[str], root: Path) -> tuple[int, str]:
    """Start a training in ``root``, SIGKILL it once its epoch log holds two epochs (a condition polled,
    not a delay), and return the epochs it had logged and what it printed."""
    import signal
    import time

    from imgclf.paths import layout

    paths = layout(root)
    env = {**os.environ, "PYTHONPATH": str(root)}
    output = root / "killed_train.log"  # a file, not a pipe: a full pipe would stall the training
    with output.open("wb") as sink:
        process = subprocess.Popen(cmd, cwd=root, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    epochs_done = 0
    while time.monotonic() < deadline and process.poll() is None:
        epochs_done = epochs_logged(paths)
        if epochs_done >= 2:
            break
        time.sleep(0.2)
    assert process.poll() is None, "training ended before it could be killed: " + output.read_text()[-2000:]
    assert epochs_done >= 2, "no two epochs logged within 300 s"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return epochs_done, output.read_text()


def merged(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` applied key by key, nested sections merged rather than replaced."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def shipped(section: str, **overrides) -> dict:
    """A params section as the repository's params.yaml ships it (checked), with ``overrides`` merged in:
    the library takes whole sections, as the stages pass them."""
    from imgclf.params import load_section
    from imgclf.paths import REPO_ROOT

    return merged(load_section(section, REPO_ROOT / "params.yaml"), overrides)


# A whole pipeline in about a minute: 20 images per class per split, one epoch, one variant checked.
TINY_PIPELINE = {
    "ingest": {"limit": 20},
    "validate": {"min_per_class": 10},
    "train": {"epochs": 1, "batch_size": 64},
    "export": {"variants": ["float32"], "calibration_samples": 20, "latency_runs": 2, "max_accuracy_drop": 1.0},
    "predict": {"variant": "float32", "allow_unfit": True},  # one epoch: evaluate may find it not fit to ship
    "promote": {"allow_unfit": True},
}


def set_params(root: Path, **sections) -> None:
    """Update params.yaml in ``root``: set_params(root, ingest={"limit": 20})."""
    import yaml

    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        params[section] = merged(params[section], values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def data_stages_done(folder: Path, **sections) -> Path:
    """A git + DVC repository in ``folder`` with ``sections`` set in params.yaml and ``dvc repro
    augment`` run: a module's template, which its tests copy (shutil.copytree, symlinks=True)."""
    root = new_repository(folder / "repo")
    set_params(root, **sections)
    run(["dvc", "repro", "augment"], root)
    return root


__all__ = [
    "FASHION_MNIST_CLASSES",
    "TINY_PIPELINE",
    "data_stages_done",
    "kill_training_after_two_epochs",
    "manifest_for",
    "merged",
    "run",
    "set_params",
    "shipped",
    "write_idx",
]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path: compares sharded outputs byte for byte."""
    return {
        str(path.relative_to(folder)): path.read_bytes() for path in sorted(Path(folder).rglob("*")) if path.is_file()
    }


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_restored():
    """``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` in ``os.environ`` (MLflow 3), which the
    subprocesses of every later test (``dvc repro``, the stages, the search) would inherit, logging to
    another test's store or to a server that is gone: put both back after each test."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != before:
        import mlflow

        mlflow.set_tracking_uri(before)
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
