"""Data in: reading a source, checking every image, and the training-ready shards the other stages read."""
