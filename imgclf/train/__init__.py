"""Training: the networks, the automatic plan, the fit loop, several workers, and the hyperparameter search."""
