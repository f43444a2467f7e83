"""A base's weights for transfer learning: ``python -m imgclf.models base-weights ...``.

A command people and scripts type; the code lives in :mod:`imgclf.train.models`.
"""

from imgclf.train.models import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
