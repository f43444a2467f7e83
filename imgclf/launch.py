"""Several TensorFlow workers on this machine: ``python -m imgclf.launch --workers 2``.

A command people and scripts type; the code lives in :mod:`imgclf.train.launch`.
"""

from imgclf.train.launch import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
