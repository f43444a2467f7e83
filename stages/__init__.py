"""The pipeline's stage scripts. dvc.yaml runs them as modules (``python -m stages.train``) so that
each run imports the package from the copy it runs in; ``python stages/train.py`` works too."""
