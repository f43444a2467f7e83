"""``dvc push`` with the run cache's outputs: ``python -m imgclf.remote push`` (``make push``).

A command people and scripts type; the code lives in :mod:`imgclf.team.remote`.
"""

from imgclf.team.remote import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
