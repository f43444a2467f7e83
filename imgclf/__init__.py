"""imgclf: the importable logic behind the pipeline's DVC stages.

Stage scripts in ``stages/`` only parse params, log and call into this package,
so every rule and transformation can be tested without DVC.
"""

import os

# albumentations checks PyPI for updates at import time; the pipeline must run offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
