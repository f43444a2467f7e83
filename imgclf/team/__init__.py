"""Working together: MLflow tracking, the shared tracking server, the DVC remote with its run cache, the UI."""
