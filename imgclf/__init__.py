"""imgclf: the importable logic behind the pipeline's DVC stages.

Stage scripts in ``stages/`` only wire params, paths and logging to this package,
so every rule and transformation can be tested without DVC.
"""

import contextlib
import importlib.abc
import importlib.util
import os
import sys
import tempfile

# albumentations checks PyPI for updates at import time; the pipeline must run offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@contextlib.contextmanager
def _stderr_held():
    """Hold what C++ libraries write to file descriptor 2 (around Python's sys.stderr); if the block
    fails, pass it on after all, so a real error is never lost."""
    if sys.stderr is None:  # started with stderr closed: nothing to hold
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class _HeldLoader(importlib.abc.Loader):
    """The real loader of the ``tensorflow`` package, run with its start-up notices held back."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with _stderr_held():
            self.loader.exec_module(module)

    def __getattr__(self, name):  # resources, is_package, ...: the real loader's
        return getattr(self.loader, name)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Imports TensorFlow without its start-up notices (oneDNN, "Could not find cuda drivers", ...).

    TensorFlow 2.21 writes them through absl before its own log level applies, so neither
    TF_CPP_MIN_LOG_LEVEL nor Python logging can hold them back, and they alarm more than they tell
    ("failed call to cuInit" on a machine that simply has no GPU). Errors still surface: as Python
    exceptions, and what was held is printed when the import fails. Set TF_CPP_MIN_LOG_LEVEL
    yourself (0 shows everything) and nothing is held back.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _HeldLoader(spec.loader)
        return spec


# The level we set is marked as ours, so child processes (dvc, tests) quiet TensorFlow the same way,
# while a level the user sets (TF_CPP_MIN_LOG_LEVEL=0) is left alone.
_OURS, _LEVEL = "IMGCLF_QUIET_TENSORFLOW", "3"  # 3: also after the import, no "failed call to cuInit"
_level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
if (_level is None or (_level == _LEVEL and os.environ.get(_OURS) == _LEVEL)) and "tensorflow" not in sys.modules:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ[_OURS] = _LEVEL
    sys.meta_path.insert(0, _QuietTensorFlow())
