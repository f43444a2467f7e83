"""A throwaway copy of the pipeline (code and params, no data, no outputs), for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from imgclf.paths import REPO_ROOT

# What a pipeline needs to run from scratch in another folder.
PIPELINE_FILES = ("dvc.yaml", "params.yaml", "stages", "imgclf", "pyproject.toml", "data/raw/README.md")


def copy_pipeline(destination: Path, source: Path = REPO_ROOT) -> Path:
    """Copy the pipeline's code and params (no data, no outputs) into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in PIPELINE_FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, destination / name)
    return destination


def new_repository(destination: Path, source: Path = REPO_ROOT) -> Path:
    """A fresh git + DVC repository holding a copy of the pipeline (:func:`copy_pipeline`), nothing else."""
    root = copy_pipeline(destination, source)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # the venv's dvc
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "test@example.com"],
        ["git", "config", "user.name", "test"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
    ):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root
