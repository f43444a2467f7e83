"""The HTTP service: ``python -m imgclf.serve`` or ``uvicorn imgclf.serve:app`` (``make serve``).

A command people and scripts type; the code lives in :mod:`imgclf.ship.serve`.
"""

from imgclf.ship.serve import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
