"""The hyperparameter search: ``python -m imgclf.tune`` (``make tune``).

A command people and scripts type; the code lives in :mod:`imgclf.train.tune`.
"""

from imgclf.train.tune import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
