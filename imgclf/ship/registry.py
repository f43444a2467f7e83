"""Promotion in the MLflow model registry: every new version is the ``candidate``; it becomes the
``champion`` (what serving loads, ``models:/<name>@champion``) only when it beats the current
champion by more than noise on the same test images.

The comparison is paired, on the images both models were tested on: McNemar's exact test on the
images where they disagree (:func:`imgclf.evaluate.metrics.paired_comparison`), as the export gate does.
When the champion was tested on other data (the test split's digest differs: test photos were
added or relabelled since), its predictions cannot be paired with the candidate's; given the
candidate's test images (:class:`TestImages`), promote then runs both models' shipped files
(``serve.variant``, from the champion's MLflow run) on those images and pairs those answers. A
champion whose file is gone, or that takes other classes or another image size, cannot be scored
again: it stays, and the report says why; a person can still move the alias by hand. Export gates
need no check here: the promote stage runs only after export-tflite succeeded.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from imgclf.evaluate.metrics import is_significant_drop, paired_comparison
from imgclf.paths import run_artifact

log = logging.getLogger(__name__)

CANDIDATE, CHAMPION = "candidate", "champion"


@dataclass
class ScoredModel:
    """A model version with what promotion needs: its predictions on a test split and that split's digest."""

    version: str
    run_id: str
    test_digest: str | None
    actual: np.ndarray  # class names, in the test split's order
    predicted: np.ndarray


@dataclass
class TestImages:
    """The candidate's test split as its shipped file sees it, to score a champion tested on other data."""

    images: np.ndarray  # uint8 (N, H, W, C), as preprocess wrote them
    actual: np.ndarray  # class names
    labels: list[str]  # the candidate's classes, in output order
    candidate_file: Path  # the candidate's shipped file (serve.variant)
    variant: str


@dataclass
class Decision:
    promote: bool
    reason: str
    comparison: dict = field(default_factory=dict)


def decide(candidate: ScoredModel, champion: ScoredModel | None, min_gain: float, significance: float) -> Decision:
    """Whether ``candidate`` takes the champion alias, and why, in words."""
    if champion is None:
        return Decision(True, "no champion yet: the first model that passed its gates becomes it")
    if champion.version == candidate.version:
        return Decision(True, "this version is already the champion")
    if _tested_apart(candidate, champion):
        return Decision(
            False,
            f"not compared: the champion (version {champion.version}) was tested on other data "
            f"(test digest {champion.test_digest} vs {candidate.test_digest}); it stays champion",
        )
    if not np.array_equal(champion.actual, candidate.actual):
        return Decision(False, "not compared: the two test splits hold the same digest but other labels")
    # "how much worse is the champion than the candidate": a significant drop means a real gain
    comparison = paired_comparison(candidate.actual, candidate.predicted, champion.predicted)
    gain = comparison["accuracy_drop"]
    if is_significant_drop(comparison, min_gain, significance):
        return Decision(True, f"beats the champion (version {champion.version}) by {gain:+.4f}", comparison)
    return Decision(
        False,
        f"does not beat the champion (version {champion.version}) beyond noise: {gain:+.4f} accuracy, "
        f"McNemar p {comparison['p_value']:.3g} (needs > {min_gain} and p < {significance})",
        comparison,
    )


def scored_model(client, version, predictions: pd.DataFrame | None = None) -> ScoredModel | None:
    """A registered version with its test predictions (the given table, or its run's eval/predictions.csv)."""
    import mlflow

    run = client.get_run(version.run_id)
    digest = next((i.dataset.digest for i in run.inputs.dataset_inputs if i.dataset.name == "test"), None)
    if predictions is None:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="eval/predictions.csv")
        except Exception as error:  # deleted artifacts, another store: the champion cannot be compared
            log.warning("version %s: no eval/predictions.csv in its run (%s)", version.version, error)
            return None
        predictions = pd.read_csv(path, dtype=str, keep_default_na=False)
    return ScoredModel(
        str(version.version),
        version.run_id,
        digest,
        predictions["actual"].to_numpy(),
        predictions["predicted"].to_numpy(),
    )


def shipped_answers(path: Path, images: np.ndarray, labels: list[str]) -> np.ndarray:
    """The class names an exported file answers for these images (LiteRT or onnxruntime, no TensorFlow)."""
    from imgclf.ship.runtime import load_classifier

    return np.asarray(labels)[load_classifier(path).predict(images).argmax(axis=1)]


def rescore(
    client, candidate: ScoredModel, champion_version, test: TestImages
) -> tuple[ScoredModel, ScoredModel] | str:
    """Candidate and champion as shipped, both run on the candidate's test images; or why the champion
    cannot be (its file is gone, other classes, another input size)."""
    import mlflow

    artifact = run_artifact(test.variant)
    folder = Path(tempfile.mkdtemp(prefix="imgclf-champion-"))
    try:
        try:
            path = Path(client.download_artifacts(champion_version.run_id, artifact, str(folder)))
            card = Path(client.download_artifacts(champion_version.run_id, run_artifact(), str(folder)))
            card = json.loads(card.read_text())
        except (mlflow.exceptions.MlflowException, OSError, ValueError) as error:
            return f"its run has no {artifact} to run on these test images ({type(error).__name__})"
        if card.get("labels") != test.labels:
            return f"it answers other classes ({', '.join(card.get('labels') or [])})"
        wanted = tuple(card.get("input", {}).get("shape", [])[1:])
        if wanted != test.images.shape[1:]:
            return f"it takes {wanted} images, these test images are {test.images.shape[1:]}"
        try:
            champion = shipped_answers(path, test.images, test.labels)
            answers = shipped_answers(test.candidate_file, test.images, test.labels)
        except (ValueError, RuntimeError, OSError) as error:  # a runtime that cannot run one of the files
            return f"its {artifact} does not run here ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return (
        ScoredModel(candidate.version, candidate.run_id, candidate.test_digest, test.actual, answers),
        ScoredModel(
            str(champion_version.version), champion_version.run_id, candidate.test_digest, test.actual, champion
        ),
    )


def _aliased(client, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception:  # MLflow raises when the alias does not exist
        return None


def promote(
    client,
    name: str,
    version: str,
    predictions: pd.DataFrame,
    min_gain: float,
    significance: float,
    blocked: str | None = None,
    test: TestImages | None = None,
) -> dict:
    """Set ``candidate`` on ``version`` (unless a newer version holds it: a rerun for an older model,
    say after an evaluate-only change, must not move it back), decide on ``champion``, return the report.
    ``blocked``: why it may not be champion whatever its accuracy (the variant it would ship is not blessed).
    ``test``: the candidate's test images, to score again a champion tested on other data."""
    newest = _aliased(client, name, CANDIDATE)
    if newest is None or int(newest.version) <= int(version):
        client.set_registered_model_alias(name, CANDIDATE, version)
    candidate = scored_model(client, client.get_model_version(name, version), predictions)
    current = _aliased(client, name, CHAMPION)
    champion = scored_model(client, current) if current is not None else None
    rescored = None
    if current is not None and champion is None:
        decision = Decision(False, f"the champion (version {current.version}) has no test predictions to compare")
    elif (
        champion is not None
        and test is not None
        and champion.version != candidate.version
        and _tested_apart(candidate, champion)
    ):
        rescored = rescore(client, candidate, current, test)
        if isinstance(rescored, str):
            decision = decide(candidate, champion, min_gain, significance)
            decision.reason += f"; it could not be scored on these test images: {rescored}"
            rescored = None
        else:
            decision = decide(*rescored, min_gain, significance)
            decision.reason = (
                f"{decision.reason} (the champion was tested on other images: both shipped {test.variant} "
                f"files scored again on these {len(test.actual)} test images)"
            )
    else:
        decision = decide(candidate, champion, min_gain, significance)
    if blocked:
        client.set_model_version_tag(name, version, "blessed", "false")
        decision = Decision(False, f"not champion: {blocked} (otherwise: {decision.reason})", decision.comparison)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    return {
        "registered_model": name,
        "version": version,
        "champion_before": None if current is None else str(current.version),
        "champion_after": version if decision.promote else (None if current is None else str(current.version)),
        **asdict(decision),
        "rescored": rescored is not None,  # both shipped files run on this test split
    }


def _tested_apart(candidate: ScoredModel, champion: ScoredModel) -> bool:
    """Whether the two were tested on other images: their predictions cannot be paired."""
    return champion.test_digest != candidate.test_digest or len(champion.actual) != len(candidate.actual)


def refuse(client, name: str, version: str, reason: str) -> dict:
    """The report for a version evaluate found not fit to ship: no alias moves (neither ``candidate``
    nor ``champion``), and the version gets the tag ``fit_to_ship: false`` with the reason."""
    client.set_model_version_tag(name, version, "fit_to_ship", "false")
    client.set_model_version_tag(name, version, "ship_verdict", reason)
    current = _aliased(client, name, CHAMPION)
    before = None if current is None else str(current.version)
    return {
        "registered_model": name,
        "version": version,
        "champion_before": before,
        "champion_after": before,
        "promote": False,
        "reason": f"not fit to ship: {reason}",
        "comparison": None,
    }
