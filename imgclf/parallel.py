"""Worker processes for the CPU-bound image loops (decode, inspect, augment).

Pools start from a fork server, not by forking the caller: the caller may hold threads
(TensorFlow's and OpenCV's pools, tqdm's monitor, MLflow's) and a forked copy of a threaded
process can die or deadlock on a lock some thread held at the fork. That happened in the test
suite, where TensorFlow is loaded before the validation tests ("BrokenProcessPool"). The fork
server is a fresh interpreter that has only imported numpy, pandas and OpenCV (their idle thread
pools, no locks held by running work); workers forked from it import what they unpickle.
As with "spawn", each worker imports the caller's main script as ``__mp_main__``: a script that
uses these pools keeps its work under ``if __name__ == "__main__":`` (every stage script does).
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

PRELOAD = ["imgclf.data.ingest"]  # numpy, pandas, OpenCV: imported once, not once per worker


def process_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes started by a fork server that has imported the image modules."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=initializer, initargs=initargs)


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by a container's CPU limit (cgroup v2
    ``cpu.max``, or v1's CFS quota), rounded up. ``os.cpu_count()`` counts the whole node's cores
    inside a container, and one busy worker per node core under a 2-CPU limit only queues."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    limit = _cgroup_cpu_limit(cgroup)
    return max(1, min(count, math.ceil(limit)) if limit else count)


def _cgroup_cpu_limit(root: Path) -> float | None:
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000" or "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:  # cgroup v1: a quota of -1 means no limit
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None
