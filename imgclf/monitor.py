"""Watching the served model: ``python -m imgclf.monitor`` (``make monitor``).

A command people and scripts type; the code lives in :mod:`imgclf.ship.monitor`.
"""

from imgclf.ship.monitor import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
