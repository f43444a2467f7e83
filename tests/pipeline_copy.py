"""A throwaway copy of the pipeline (code and params, no data, no outputs), for tests and benchmarks."""

from __future__ import annotations

import shutil
from pathlib import Path

from imgclf.paths import REPO_ROOT

# What a pipeline needs to run from scratch in another folder.
PIPELINE_FILES = ("dvc.yaml", "params.yaml", "stages", "imgclf", "pyproject.toml")


def copy_pipeline(destination: Path, source: Path = REPO_ROOT) -> Path:
    """Copy the pipeline's code and params (no data, no outputs) into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in PIPELINE_FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source / name, destination / name)
    return destination
