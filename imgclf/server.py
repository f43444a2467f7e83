"""The team's tracking server (PostgreSQL + mlflow server): ``python -m imgclf.server``.

A command people and scripts type; the code lives in :mod:`imgclf.team.server`.
"""

from imgclf.team.server import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
