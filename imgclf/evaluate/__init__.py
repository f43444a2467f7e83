"""Evaluation: the test split's metrics, the figures a person looks at, and the baseline a model must beat."""
