"""Shipping: export and its gates, the TensorFlow-free runtime, batch predictions, the HTTP service, promotion."""
