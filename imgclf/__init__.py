"""imgclf: the importable logic behind the pipeline's DVC stages.

Stage scripts in ``stages/`` only parse params, log and call into this package,
so every rule and transformation can be tested without DVC.
"""

import os

# albumentations checks PyPI for updates at import time; the pipeline must run offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# TensorFlow's C++ logs (oneDNN notices, "failed call to cuInit" on a machine that simply has no GPU)
# alarm more than they tell; errors still surface as Python exceptions. Set TF_CPP_MIN_LOG_LEVEL=0
# to see them. This runs before any module of the package imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
