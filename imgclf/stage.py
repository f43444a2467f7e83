"""The stage runner: what every ``stages/*.py`` script would otherwise repeat.

A stage script is its particular part only::

    def main(params: dict, paths: Layout) -> list[Path]:
        ...                      # read, call into the package, write
        return [paths.x, ...]    # what it wrote

    if __name__ == "__main__":
        run_stage("name", main)

The runner takes the stage name once. It sets up logging (the script's own ``log`` appears as
``stage.<name>``, distinct from the library's ``imgclf.*`` loggers), loads and checks the stage's
params section (a bad or unknown key fails here, before anything is read or written), builds the
layout, calls ``main``, logs each output with its size, and turns a :class:`PipelineError` into one
line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from imgclf.io import PipelineError, describe
from imgclf.params import load_section, section_of
from imgclf.paths import Layout, layout


class _StageName(logging.Filter):
    """Records of the stage script (logger ``__main__``) carry the stage's name instead."""

    def __init__(self, name: str):
        super().__init__()
        self.stage = f"stage.{name}"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "__main__":
            record.name = self.stage
        return True


def setup_logging(name: str) -> logging.Logger:
    """One line per record on stderr, level from ``IMGCLF_LOG_LEVEL`` (INFO)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    handler.addFilter(_StageName(name))
    logging.basicConfig(level=os.environ.get("IMGCLF_LOG_LEVEL", "INFO"), handlers=[handler], force=True)
    for noisy in ("tensorflow", "absl"):  # "Assets written to ..." on every export; Keras bars while muted
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(f"stage.{name}")


def run_stage(name: str, main: Callable[[dict, Layout], Iterable[Path] | None]) -> None:
    """Run stage ``name``'s ``main(params, paths)`` and exit with its status."""
    log = setup_logging(name)
    start = time.perf_counter()
    try:
        params = load_section(section_of(name))
        outputs = main(params, layout()) or []
    except PipelineError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
    for path in outputs:
        log.info("wrote %s", describe(path))
    log.info("%s done in %.1f s", name, time.perf_counter() - start)
    sys.exit(0)
