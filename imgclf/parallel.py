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

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

PRELOAD = ["imgclf.data.ingest"]  # numpy, pandas, OpenCV: imported once, not once per worker


def process_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes started by a fork server that has imported the image modules."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=initializer, initargs=initargs)
