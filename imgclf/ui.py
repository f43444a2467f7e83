"""The MLflow UI on this repository's runs: ``python -m imgclf.ui`` (``make ui``).

A command people and scripts type; the code lives in :mod:`imgclf.team.ui`.
"""

from imgclf.team.ui import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
