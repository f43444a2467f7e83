"""Where every stage reads and writes, in one place.

Stages and tests never spell another stage's output layout by hand: they ask a
:class:`Layout`. ``dvc.yaml`` names the same paths; ``tests/test_dvc_yaml.py``
keeps the two in agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("train", "val", "test")


def unknown_detector_name(variant: str) -> str:
    """A variant's out-of-distribution detector file (beside the model card, and so in the MLflow run)."""
    return f"ood_{variant}.npz"


def run_artifact(variant: str | None = None) -> str:
    """Where export-tflite logs a variant's file (or, without one, the model card) in the training's MLflow
    run: its path under models/ (``tflite/model_int8.tflite``, ``onnx/model.onnx``, ``tflite/model_card.json``)."""
    models = Layout(Path("."))
    local = models.tflite_meta if variant is None else models.exported_model(variant)
    return local.relative_to(models.tflite.parent).as_posix()


@dataclass(frozen=True)
class Layout:
    """Paths of all pipeline artifacts under one repository root."""

    root: Path

    # the user's photos: a dependency of ingest (dvc.yaml), versioned with `dvc add`
    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    # ingest
    @property
    def ingested(self) -> Path:
        return self.root / "data" / "ingested"

    @property
    def ingested_manifest(self) -> Path:
        return self.ingested / "manifest.csv"

    @property
    def ingested_images(self) -> Path:
        return self.ingested / "images.npy"

    @property
    def ingested_shards(self) -> Path:
        """Folder datasets: the files' bytes, in ``images-SS.bin`` shards (:mod:`imgclf.data.shards`)."""
        return self.ingested / "shards"

    @property
    def ingested_meta(self) -> Path:
        return self.ingested / "meta.json"

    # validate
    @property
    def validated(self) -> Path:
        return self.root / "data" / "validated"

    @property
    def validated_manifest(self) -> Path:
        return self.validated / "manifest.csv"

    @property
    def validation_report(self) -> Path:
        return self.root / "reports" / "validation.json"

    @property
    def validation_summary(self) -> Path:
        return self.root / "reports" / "validation.md"

    @property
    def validation_warnings(self) -> Path:
        """Rows kept although a ``warn`` rule flagged them (near-duplicates, by default)."""
        return self.root / "reports" / "validation_warnings.csv"

    @property
    def quarantine(self) -> Path:
        return self.root / "reports" / "quarantine.csv"

    # preprocess
    @property
    def preprocessed(self) -> Path:
        return self.root / "data" / "preprocessed"

    def preprocessed_split(self, split: str) -> Path:
        """One split's images and labels, as ``x-SS.npy`` and ``y-SS.npy`` shards."""
        return self.preprocessed / split

    @property
    def preprocessed_meta(self) -> Path:
        return self.preprocessed / "meta.json"

    @property
    def preprocessed_index(self) -> Path:
        return self.preprocessed / "index.csv"

    # augment
    @property
    def augmented(self) -> Path:
        return self.root / "data" / "augmented"

    @property
    def augment_policy(self) -> Path:
        return self.root / "models" / "augment.yaml"

    @property
    def augment_preview(self) -> Path:
        return self.root / "reports" / "augment_preview.png"

    # train
    @property
    def model(self) -> Path:
        return self.root / "models" / "model.keras"

    @property
    def run_info(self) -> Path:
        return self.root / "models" / "run.json"

    @property
    def train_reports(self) -> Path:
        return self.root / "reports" / "train"

    @property
    def history(self) -> Path:
        return self.train_reports / "history.csv"

    @property
    def train_plan(self) -> Path:
        """The training plan: batch size, epochs and the rest as chosen for this data, with reasons."""
        return self.train_reports / "plan.json"

    @property
    def train_backup(self) -> Path:
        """BackupAndRestore's state: outside DVC outputs so a killed run can resume."""
        return self.root / ".cache" / "train_backup"

    # evaluate
    @property
    def metrics(self) -> Path:
        """The headline DVC compares (``dvc exp show``, ``dvc metrics diff``): a dozen numbers, no strings."""
        return self.root / "reports" / "metrics.json"

    @property
    def eval_detail(self) -> Path:
        """Every evaluation figure (per class, the baseline's test): git-tracked, not a DVC metric."""
        return self.eval_reports / "metrics.json"

    @property
    def eval_history(self) -> Path:
        """train's epoch history, copied into git: ``dvc plots diff <rev>`` needs no ``dvc pull``."""
        return self.eval_reports / "history.csv"

    @property
    def eval_training(self) -> Path:
        """The MLflow run (ids) and the training plan (with its reasons) this evaluation is of, in git."""
        return self.eval_reports / "training.json"

    @property
    def roc_points(self) -> Path:
        """The micro-averaged ROC curve on a fixed grid, for ``dvc plots``."""
        return self.eval_reports / "roc.csv"

    @property
    def reliability_points(self) -> Path:
        """The reliability (calibration) curve behind the ECE, for ``dvc plots``."""
        return self.eval_reports / "calibration.csv"

    @property
    def eval_reports(self) -> Path:
        return self.root / "reports" / "eval"

    @property
    def predictions(self) -> Path:
        return self.eval_reports / "predictions.csv"

    @property
    def eval_verdict(self) -> Path:
        """evaluate's verdict: is the model fit to ship (export copies it into the model card)."""
        return self.eval_reports / "verdict.json"

    @property
    def eval_summary(self) -> Path:
        """The evaluation in words: test size, accuracy beside the baseline's, the training plan's warnings."""
        return self.eval_reports / "summary.md"

    # audit
    @property
    def audit_reports(self) -> Path:
        return self.root / "reports" / "audit"

    @property
    def label_issues(self) -> Path:
        """Likely label errors, most likely first: source, split, given and suggested label, score, reason."""
        return self.audit_reports / "label_issues.csv"

    @property
    def image_issues(self) -> Path:
        """Images that decode and still make poor data: source, issue, measured value, threshold."""
        return self.audit_reports / "image_issues.csv"

    @property
    def audit_summary(self) -> Path:
        """The audit's headline (three numbers): a DVC metric, so `dvc metrics diff` shows them fall as
        labels get fixed, short enough for `dvc exp show`."""
        return self.audit_reports / "summary.json"

    @property
    def audit_detail(self) -> Path:
        """Every count behind the headline (per image issue, images scored and measured, findings accepted):
        git-tracked, not a DVC metric, so it does not widen `dvc exp show`."""
        return self.audit_reports / "detail.json"

    @property
    def audit_report(self) -> Path:
        """The page a person reads: the flagged images with given and suggested labels, and what to do."""
        return self.audit_reports / "report.html"

    # export-tflite
    @property
    def tflite(self) -> Path:
        """The .tflite variants, one ``model_<variant>.tflite`` each, and their model card."""
        return self.root / "models" / "tflite"

    def tflite_model(self, variant: str) -> Path:
        return self.tflite / f"model_{variant}.tflite"

    @property
    def onnx_model(self) -> Path:
        return self.root / "models" / "onnx" / "model.onnx"

    def exported_model(self, variant: str) -> Path:
        """A variant's file: ``onnx`` -> models/onnx/model.onnx, the others .tflite in models/tflite."""
        return self.onnx_model if variant == "onnx" else self.tflite_model(variant)

    @property
    def monitor_summary(self) -> Path:
        """``python -m imgclf.monitor``'s figures and alerts on the service's prediction log."""
        return self.root / "reports" / "monitor" / "summary.json"

    @property
    def monitor_report(self) -> Path:
        """The monitor's page: alerts, the figures, plots against the test split (offline)."""
        return self.root / "reports" / "monitor" / "report.html"

    def unknown_detector(self, variant: str) -> Path:
        """A variant's out-of-distribution detector (``ood_<variant>.npz``), beside the model card."""
        return self.tflite / unknown_detector_name(variant)

    @property
    def tflite_meta(self) -> Path:
        return self.tflite / "model_card.json"

    @property
    def labels(self) -> Path:
        return self.root / "models" / "labels.txt"

    @property
    def export_report(self) -> Path:
        """Every variant's verification and verdict (``blessed``): git-tracked, not a DVC metric."""
        return self.root / "reports" / "export.json"

    @property
    def shipped_metrics(self) -> Path:
        """The headline of the variant the service ships (``serve.variant``): a DVC metric."""
        return self.root / "reports" / "shipped.json"

    # predict
    @property
    def predict_output(self) -> Path:
        """Predictions for the ``predict`` split (unlabelled images the source provides)."""
        return self.root / "reports" / "predict" / "predictions.csv"

    # promote
    @property
    def promotion(self) -> Path:
        """The registry decision: candidate and champion aliases, the comparison, the reason."""
        return self.root / "reports" / "promotion.json"

    # tune (python -m imgclf.tune: a command, not a stage)
    @property
    def tune_reports(self) -> Path:
        return self.root / "reports" / "tune"

    @property
    def tune_trials(self) -> Path:
        return self.tune_reports / "trials.csv"

    @property
    def tune_best(self) -> Path:
        """The best trial's params, and the ``dvc exp run -S ...`` line that applies them."""
        return self.tune_reports / "best_params.json"


def layout(root: str | Path | None = None) -> Layout:
    """The layout under ``root`` (default: the repository this package lives in, or the cwd)."""
    if root is None:
        root = Path.cwd() if (Path.cwd() / "dvc.yaml").exists() else REPO_ROOT
    return Layout(Path(root).resolve())
