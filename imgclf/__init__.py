"""imgclf: the importable logic behind the pipeline's DVC stages.

Stage scripts in ``stages/`` only wire params, paths and logging to this package,
so every rule and transformation can be tested without DVC.
"""

import contextlib
import importlib.abc
import importlib.util
import os
import sys

# albumentations checks PyPI for updates at import time; the pipeline must run offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@contextlib.contextmanager
def _stderr_silenced():
    """Point file descriptor 2 at /dev/null: C++ libraries write there, around Python's sys.stderr."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Imports TensorFlow without its start-up notices (oneDNN, "Could not find cuda drivers", ...).

    TensorFlow 2.21 writes them through absl before its own log level applies, so neither
    TF_CPP_MIN_LOG_LEVEL nor Python logging can hold them back; they alarm more than they tell
    ("failed call to cuInit" on a machine that simply has no GPU). Only when the user has not set
    TF_CPP_MIN_LOG_LEVEL: set it (to 0, say) and everything TensorFlow says is shown.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def exec_module(module):
                with _stderr_silenced():
                    load(module)

            spec.loader.exec_module = exec_module
        return spec


if "TF_CPP_MIN_LOG_LEVEL" not in os.environ and "tensorflow" not in sys.modules:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # after the import too: no "failed call to cuInit"
    sys.meta_path.insert(0, _QuietTensorFlow())
