"""Served mistakes into the next training set: ``python -m imgclf.feedback export data/raw/<photos>``.

A command people and scripts type; the code lives in :mod:`imgclf.ship.feedback`.
"""

from imgclf.ship.feedback import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
