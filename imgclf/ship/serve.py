"""The HTTP prediction service: ``uvicorn imgclf.serve:app`` (``make serve``).

It serves an exported model (.tflite with LiteRT, .onnx with onnxruntime), never TensorFlow, so
the container needs only ``requirements-serve.txt``. Uploads go through the pipeline's own
decoding and preprocessing (:func:`imgclf.data.images.decode`, :func:`imgclf.data.images.prepare`, the model
card's size and colour mode), so a served prediction equals the predict stage's for the same file.

- ``GET /health``: 200 ``{"status": "ok"}`` once a model is loaded, 503 before.
- ``GET /v1/model``: labels, input contract, variant, registry version or run, test metrics.
- ``POST /v1/predict``: multipart ``file`` fields -> ``{"predictions": [...]}`` in upload order, each
  with ``unknown`` (the image is unlike anything the model was trained on: ``label`` is only the
  closest class) and ``unknown_score`` (:mod:`imgclf.ship.ood`); a file that cannot be used gets ``{"file", "error": "<rule>: <reason>"}`` (validate's rule words).
  413 body or file count too large, 415 not multipart, 422 no file; each with a JSON ``detail``.
- ``GET /``: a page to drop images on and see each one's top-k as bars (no CDN: works offline).
- ``GET /metrics``: Prometheus text: requests, latency histogram, per-file errors by rule.

The model comes from ``IMGCLF_MODEL`` (a path or ``models:/<name>@<alias>``), else ``serve.model``
in params.yaml, else the exported file in ``models/``. Interpreters are not thread-safe: the
service keeps ``serve.workers`` (``IMGCLF_WORKERS``; by default one per core it may use) of them in
a pool, and each request's images go to one of them as one batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import shutil
import sqlite3
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from imgclf.data.images import COLOR_MODES, ImageError, decode, prepare, read_header
from imgclf.io import PipelineError, read_json
from imgclf.parallel import usable_cpus
from imgclf.paths import run_artifact, unknown_detector_name
from imgclf.ship.export import (  # TensorFlow only loads inside its converter
    VARIANTS,
    blessed_fallback,
    unblessed_reason,
    unfit_reason,
)
from imgclf.ship.ood import Detector
from imgclf.ship.prediction_log import CAPTURE, PredictionLog, UnknownPrediction
from imgclf.ship.runtime import load_classifier

log = logging.getLogger(__name__)
MB = 1024 * 1024
PAGE = Path(__file__).with_name("static") / "index.html"
REGISTRY_SCHEMES = ("models:/", "runs:/")
FEEDBACK_MAX_BYTES = 4096  # {"id": 32 hex, "label": a class name}: far below this


class ModelError(RuntimeError):
    """The model cannot be found or loaded: the service does not start, with this one line."""


@dataclass
class Settings:
    """``serve`` params; the defaults are params.yaml's shipped values (used when it is absent)."""

    model: str | None = None
    variant: str = "int8"
    top_k: int = 3
    max_upload_mb: float = 20.0
    max_file_mb: float = 6.0
    max_files: int = 64
    max_pixels: int = 50_000_000
    workers: int | None = None
    log: str | None = None  # the prediction log (params.yaml ships logs/predictions.db; None here: no log)
    capture: str = "off"  # images kept: off, unknown, all
    capture_max_mb: float = 500.0
    allow_unfit: bool = False  # IMGCLF_ALLOW_UNFIT=1: serve a model evaluate found not fit to ship

    @classmethod
    def load(cls) -> Settings:
        """params.yaml's ``serve`` section when the service runs in the repository, then the environment."""
        settings = cls()
        if Path("params.yaml").exists():
            from imgclf.params import load_section

            settings = cls(**load_section("serve"))
        settings.model = os.environ.get("IMGCLF_MODEL") or settings.model
        settings.variant = os.environ.get("IMGCLF_VARIANT") or settings.variant
        settings.log = os.environ.get("IMGCLF_LOG") or settings.log
        if settings.log in ("off", "none", "null"):
            settings.log = None
        settings.capture = os.environ.get("IMGCLF_CAPTURE") or settings.capture
        settings.allow_unfit = os.environ.get("IMGCLF_ALLOW_UNFIT", "") not in ("", "0", "false")
        if workers := os.environ.get("IMGCLF_WORKERS"):
            if not workers.isdigit() or int(workers) < 1:
                raise PipelineError(f"IMGCLF_WORKERS={workers!r}: a number of model instances, 1 or more")
            settings.workers = int(workers)
        return settings


@dataclass
class LoadedModel:
    pool: queue.Queue
    labels: list[str]
    image_size: int
    color_mode: str
    variant: str
    source: str
    version: str | None = None
    run_id: str | None = None
    metrics: dict = field(default_factory=dict)
    cleanup: Path | None = None  # a registry download, removed at shutdown
    unfit: str | None = None  # evaluate's reason, when the model is not fit to ship (served by IMGCLF_ALLOW_UNFIT)
    detector: Detector | None = None  # the out-of-distribution detector export fitted for this variant

    @property
    def name(self) -> str:
        """What the prediction log records as the model: its source, and its registry version if any."""
        return f"{self.source} (version {self.version})" if self.version else self.source

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One batched call on a free model instance (blocks while all are busy): the probabilities, and
        each image's unknown score (None without a detector)."""
        classifier = self.pool.get()
        try:
            probabilities, features = classifier.predict_with_features(images)
        finally:
            self.pool.put(classifier)
        if self.detector is None:
            return probabilities, None
        return probabilities, self.detector.score(probabilities, features)


# -- finding and loading the model ----------------------------------------------------------------


def _local_files(settings: Settings) -> tuple[Path, Path, dict]:
    """The model file, its model card and (if the pipeline's reports are here) its test metrics."""
    from imgclf.paths import layout

    paths = layout(Path.cwd())
    model = Path(settings.model) if settings.model else paths.exported_model(settings.variant)
    if not model.is_file():
        hint = "run `dvc repro` (export-tflite writes it)" if not settings.model else "check IMGCLF_MODEL"
        raise ModelError(f"model file {model} not found: {hint}")
    # beside the file, or models/tflite/ for models/onnx/model.onnx (export-tflite writes one card)
    candidates = (model.parent / "model_card.json", model.parent.parent / "tflite" / "model_card.json")
    card = next((c for c in candidates if c.is_file()), None)
    if card is None:
        raise ModelError(f"no model_card.json beside {model} or in ../tflite/: it holds the labels and input size")
    metrics = {}
    if paths.eval_detail.is_file():  # evaluate's figures on the test split
        test = read_json(paths.eval_detail).get("test", {})
        metrics = {f"test_{k}": v for k, v in test.items() if isinstance(v, int | float)}
    return model, card, metrics


def _registry_files(uri: str, variant: str) -> tuple[Path, Path, dict, str | None, str, Path]:
    """Download the exported file and model card of a registered version (``models:/name@alias``,
    ``models:/name/3``) or a run (``runs:/<id>``): export-tflite logs them into the training's run."""
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError as error:
        raise ModelError(f"{uri} needs mlflow installed (pip install mlflow), or serve a file path") from error
    from imgclf.team.tracking import tracking_uri

    client = MlflowClient(tracking_uri(Path.cwd()))
    version = None
    try:
        if uri.startswith("runs:/"):
            run_id = uri.removeprefix("runs:/").strip("/").split("/")[0]
        else:
            name, _, ref = uri.removeprefix("models:/").partition("@")
            if ref:
                found = client.get_model_version_by_alias(name, ref)
            else:
                name, _, number = name.rpartition("/")
                found = client.get_model_version(name, number)
            run_id, version = found.run_id, str(found.version)
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise ModelError(f"{uri}: {error.message.splitlines()[0]} (tracking URI {client.tracking_uri})") from None
    folder = Path(tempfile.mkdtemp(prefix="imgclf-serve-"))
    artifact = run_artifact(variant)
    try:
        model = Path(client.download_artifacts(run_id, artifact, str(folder)))
        card = Path(client.download_artifacts(run_id, run_artifact(), str(folder)))
        try:  # a run exported before unknown detectors has none: served without one, and said so
            client.download_artifacts(run_id, f"tflite/{unknown_detector_name(variant)}", str(folder))
        except (mlflow.exceptions.MlflowException, OSError):
            pass
    except (mlflow.exceptions.MlflowException, OSError) as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise ModelError(f"{uri}: run {run_id} has no {artifact} (was export-tflite run for it?): {error}") from None
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("test_") or k.startswith(f"tflite_{variant}_")}
    return model, card, metrics, version, run_id, folder


def _card(path: Path) -> tuple[list[str], int, str]:
    """Labels, image size and colour mode from a model card, or a ModelError saying what is wrong."""
    try:
        card = read_json(path)
        labels, size, mode = list(card["labels"]), int(card["input"]["image_size"]), str(card["input"]["color_mode"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{path}: not a model card export-tflite wrote ({type(error).__name__}: {error})") from None
    if mode not in COLOR_MODES or not labels:
        raise ModelError(f"{path}: color_mode {mode!r} / {len(labels)} labels: not a model card export-tflite wrote")
    return labels, size, mode


def load_model(settings: Settings) -> LoadedModel:
    """The model instances, its card checked against the model itself (a mismatch would fail every request)."""
    spec = settings.model or ""
    if settings.variant not in VARIANTS:
        raise ModelError(
            f"variant {settings.variant!r} (IMGCLF_VARIANT or serve.variant) is not one of {', '.join(VARIANTS)}"
        )
    cleanup = version = run_id = None
    try:
        if spec.startswith(REGISTRY_SCHEMES):
            model, card, metrics, version, run_id, cleanup = _registry_files(spec, settings.variant)
        else:
            model, card, metrics = _local_files(settings)
        labels, size, mode = _card(card)
        unfit = unfit_reason(read_json(card))
        chosen = "onnx" if model.suffix == ".onnx" else model.stem.removeprefix("model_")
        unblessed = unblessed_reason(read_json(card), chosen)
        by_name = not settings.model or spec.startswith(REGISTRY_SCHEMES)  # a path names one file: no fallback
        blessed = blessed_fallback(read_json(card)) if unblessed else None
        fallback = blessed if by_name else None
        if fallback:  # export's gate: this variant lost accuracy beyond noise; serve a blessed one, and say so
            log.warning("variant %s is %s; serving %s instead", chosen, unblessed, fallback)
            if cleanup:
                shutil.rmtree(cleanup, ignore_errors=True)
                cleanup = None
            return load_model(replace(settings, variant=fallback))
        if unblessed and not settings.allow_unfit:
            other = (
                f"variant {blessed} is blessed: unset IMGCLF_MODEL and set IMGCLF_VARIANT={blessed}"
                if blessed
                else "no other variant is blessed"
            )
            raise ModelError(
                f"{spec or model}: variant {chosen} is {unblessed}; {other}; IMGCLF_ALLOW_UNFIT=1 serves it anyway"
            )
        if unblessed:
            log.warning("serving variant %s, %s (IMGCLF_ALLOW_UNFIT)", chosen, unblessed)
        if unfit and not settings.allow_unfit:
            raise ModelError(
                f"{spec or model} is not fit to ship: {unfit} (evaluate's verdict in its model card); "
                "IMGCLF_ALLOW_UNFIT=1 serves it anyway"
            )
        if unfit:
            log.warning("serving a model NOT FIT TO SHIP (IMGCLF_ALLOW_UNFIT): %s", unfit)
        cores = usable_cpus()  # a container's CPU limit, not the node's cores
        workers = settings.workers or cores
        threads = max(1, cores // workers)
        pool: queue.Queue = queue.Queue()
        try:
            for _ in range(workers):
                pool.put(load_classifier(model, num_threads=threads))
            probe = pool.queue[0].predict(np.zeros((1, size, size, COLOR_MODES[mode]), np.uint8))
        except (ValueError, RuntimeError) as error:
            raise ModelError(
                f"{model}: cannot load or run it with {card.name}'s {size}px {mode} input: {error}"
            ) from None
        if probe.shape[-1] != len(labels):
            raise ModelError(f"{model} has {probe.shape[-1]} outputs but {card} lists {len(labels)} labels")
        detector = _detector(card, chosen, pool.queue[0])
    except ModelError:
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
        raise
    variant = "onnx" if model.suffix == ".onnx" else model.stem.removeprefix("model_")
    log.info("serving %s (%s, %d instance(s) x %d thread(s))", spec or model, variant, workers, threads)
    return LoadedModel(
        pool=pool,
        labels=labels,
        image_size=size,
        color_mode=mode,
        variant=variant,
        source=spec or str(model),
        version=version,
        run_id=run_id,
        metrics=metrics,
        cleanup=cleanup,
        unfit=unfit,
        detector=detector,
    )


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None as soon as it is over ``limit`` bytes: by its Content-Length when
    it declares one, else (or if it lies) while it streams in, so memory never holds more."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _detector(card: Path, variant: str, classifier) -> Detector | None:
    """The variant's unknown detector (``ood_<variant>.npz`` beside the card), checked on a probe image;
    None, with a warning, for a model exported before detectors (every answer then has ``unknown: null``)."""
    path = card.parent / unknown_detector_name(variant)
    if not path.is_file():
        log.warning(
            "no unknown detector (%s) for this model: answers carry unknown: null; rerun export-tflite", path.name
        )
        return None
    try:
        detector = Detector.load(path)
        probe = np.zeros((1, *classifier.input_shape), np.uint8)
        detector.score(*classifier.predict_with_features(probe))
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: not a detector export-tflite wrote for this model ({error})") from None
    return detector


def open_log(settings: Settings) -> PredictionLog | None:
    """The prediction log ``serve.log`` names (created on first use), or None when it is off."""
    if not settings.log:
        return None
    if settings.capture not in CAPTURE:
        raise ModelError(
            f"serve.capture (or IMGCLF_CAPTURE) must be one of {', '.join(CAPTURE)}, not {settings.capture!r}"
        )
    try:
        return PredictionLog(settings.log, settings.capture, settings.capture_max_mb)
    except (OSError, sqlite3.Error) as error:
        raise ModelError(f"prediction log {settings.log}: {error}") from None


# -- one upload -> the model's input or the reason it has none ------------------------------------


def model_input(data: bytes, model: LoadedModel, settings: Settings) -> tuple[np.ndarray | None, str | None]:
    """The same checks and steps as validate and preprocess, with the same rule words."""
    if len(data) > settings.max_file_mb * MB:
        return None, f"file_size: {len(data) / MB:.1f} MB > limit {settings.max_file_mb:g} MB"
    try:
        header = read_header(data)
    except ImageError as error:
        return None, f"readable: {error}"
    if header.pixels > settings.max_pixels:
        return (
            None,
            f"max_pixels: {header.width}x{header.height} = {header.pixels:,} pixels > limit {settings.max_pixels:,}",
        )
    try:
        image = decode(data, header=header)
    except ImageError as error:
        return None, f"readable: {error}"
    return prepare(image, model.image_size, model.color_mode), None


def classify(files: list[tuple[str, bytes | None]], model: LoadedModel, settings: Settings) -> list[dict]:
    """``(name, bytes)`` uploads -> one result each, in order: the top-k, or the reason there is none.
    The usable images go to the model as one batch."""
    results, inputs, positions = [], [], []
    for name, data in files:
        if data is None:
            tensor, error = None, "readable: the file field holds text, not a file"
        else:
            tensor, error = model_input(data, model, settings)
        if error:
            results.append({"file": name, "error": error})
        else:
            positions.append(len(results))
            inputs.append(tensor)
            results.append({"file": name})
    if inputs:
        probabilities, scores = model.predict(np.stack(inputs))
        for i, (position, p) in enumerate(zip(positions, probabilities, strict=True)):
            top = _top_k(p, model.labels, settings.top_k)
            results[position] |= {"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}
            results[position] |= unknown_fields(model.detector, None if scores is None else scores[i])
    return results


def unknown_fields(detector: Detector | None, score: float | None) -> dict:
    """``unknown`` (the image is unlike the training data: ``label`` is only the closest class) and the
    score it was decided on; both null without a detector."""
    if detector is None or score is None:
        return {"unknown": None, "unknown_score": None}
    return {"unknown": bool(score > detector.threshold), "unknown_score": round(float(score), 6)}


def _top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[dict]:
    best = np.argsort(-probabilities, kind="stable")[: min(k, len(labels))]
    return [{"label": labels[i], "probability": round(float(probabilities[i]), 6)} for i in best]


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


# -- the app ---------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None, model: LoadedModel | None = None) -> FastAPI:
    """The service; ``settings`` default to params.yaml and the environment, read at start-up, where the
    model loads (unless ``model`` is given: :func:`main` loads it first, to fail in one line)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):

        try:
            app.state.settings = settings or Settings.load()
            app.state.model = model or await run_in_threadpool(load_model, app.state.settings)
            app.state.busy = asyncio.Semaphore(app.state.model.pool.qsize())
            app.state.log = open_log(app.state.settings)
        except (ModelError, PipelineError) as error:
            log.error("imgclf.serve: %s", error)  # the one line; uvicorn then says "Application startup failed"
            raise ModelError(f"imgclf.serve: {error}") from None
        yield
        if app.state.log is not None:
            app.state.log.close()
        if app.state.model.cleanup:
            shutil.rmtree(app.state.model.cleanup, ignore_errors=True)

    app = FastAPI(title="imgclf", summary="Image classification with the pipeline's exported model", lifespan=lifespan)
    app.state.model = None
    app.state.settings = settings or Settings()
    registry = CollectorRegistry()
    requests = Counter("imgclf_requests", "HTTP requests", ["path", "status"], registry=registry)
    latency = Histogram(
        "imgclf_request_seconds",
        "Request latency",
        ["path"],
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        registry=registry,
    )
    images = Counter("imgclf_images", "Images predicted", registry=registry)
    answers = Counter(
        "imgclf_predictions", "Predictions by label, and whether the image was called unknown",
        ["label", "unknown"], registry=registry,
    )  # fmt: skip
    feedback_outcomes = Counter(
        "imgclf_feedback", "Feedback by outcome: correct (the answer confirmed) or corrected", ["outcome"],
        registry=registry,
    )  # fmt: skip
    live_accuracy = Gauge(
        "imgclf_feedback_accuracy", "Share of answers people confirmed, among those they gave feedback on",
        registry=registry,
    )  # fmt: skip

    outcome_counts = dict.fromkeys(("correct", "corrected"), 0)  # this process's, as the counters are

    def _accuracy() -> float:
        total = sum(outcome_counts.values())
        return outcome_counts["correct"] / total if total else float("nan")

    live_accuracy.set_function(_accuracy)
    file_errors = Counter(
        "imgclf_file_errors", "Uploaded files that could not be used, by rule", ["rule"], registry=registry
    )
    known_paths = {"/", "/health", "/v1/model", "/v1/predict", "/v1/feedback", "/metrics"}

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        path = request.url.path if request.url.path in known_paths else "other"
        requests.labels(path, str(response.status_code)).inc()
        latency.labels(path).observe(time.perf_counter() - started)
        return response

    @app.get("/health")
    async def health():
        if app.state.model is None:
            return _problem(503, "no model loaded yet")
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model_info():
        model: LoadedModel | None = app.state.model
        if model is None:
            return _problem(503, "no model loaded yet")
        return {
            "labels": model.labels,
            "input": {"image_size": model.image_size, "color_mode": model.color_mode, "dtype": "uint8"},
            "variant": model.variant,
            "source": model.source,
            "version": model.version,
            "run_id": model.run_id,
            "metrics": model.metrics,
            "fit_to_ship": model.unfit is None,
            "unknown_detector": None
            if model.detector is None
            else {"name": model.detector.name, "threshold": round(model.detector.threshold, 6)},
            "not_fit_reason": model.unfit,
            "limits": {
                "max_upload_mb": app.state.settings.max_upload_mb,
                "max_file_mb": app.state.settings.max_file_mb,
                "max_files": app.state.settings.max_files,
                "max_pixels": app.state.settings.max_pixels,
            },
        }

    @app.post("/v1/predict")
    async def predict(request: Request):
        model: LoadedModel | None = app.state.model
        settings: Settings = app.state.settings
        if model is None:
            return _problem(503, "no model loaded yet")
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            return _problem(415, "send the images as multipart/form-data, one 'file' field each")
        body = await _read_body(request, int(settings.max_upload_mb * MB))
        if body is None:
            return _problem(413, f"request body > limit {settings.max_upload_mb:g} MB")
        request._body = body  # Starlette's form parser reads the body already received
        try:
            form = await request.form(max_files=settings.max_files, max_fields=settings.max_files + 100)
        except HTTPException as error:
            text = str(error.detail)
            if "Too many files" in text:
                return _problem(413, f"more than {settings.max_files} files in one request")
            if "Too many fields" in text:
                return _problem(413, f"more than {settings.max_files + 100} form fields in one request")
            return _problem(400, f"bad form: {text}")
        try:
            uploads = [value for key, value in form.multi_items() if key == "file"]
            if not uploads:
                return _problem(422, "no 'file' field in the form: send each image as a field named file")
            files = []
            for upload in uploads:
                if isinstance(upload, UploadFile):
                    name = PurePath((upload.filename or "").replace("\\", "/")).name or "(unnamed)"
                    files.append((name, await upload.read()))
                else:
                    files.append(("(text field)", None))
            # decoding and the model run in worker threads, at most `workers` requests at a time: the
            # event loop keeps answering (/health too), and memory stays bounded by a few decodes
            async with app.state.busy:
                results = await run_in_threadpool(classify, files, model, settings)
            if app.state.log is not None:  # each answer gets its id here, in one transaction per request
                uploads_by_position = {i: data for i, (_, data) in enumerate(files) if data is not None}
                try:
                    await run_in_threadpool(
                        app.state.log.append, results, uploads_by_position, model.name, model.variant
                    )
                except (sqlite3.Error, OSError, PipelineError) as error:  # a full disk: answer anyway, unlogged
                    log.error("prediction log %s: %s; answering without ids", app.state.log.path, error)
                    for result in results:
                        result.pop("id", None)
            for result in results:
                if "error" in result:
                    file_errors.labels(result["error"].split(":", 1)[0]).inc()
                else:
                    answers.labels(result["label"], str(result["unknown"]).lower()).inc()
            images.inc(sum("label" in result for result in results))
            return {"predictions": results}
        finally:
            await form.close()

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        """``{"id": "<prediction id>", "label": "<the correct class>"}``: the label a person gave the image."""
        model: LoadedModel | None = app.state.model
        if model is None:
            return _problem(503, "no model loaded yet")
        if app.state.log is None:
            return _problem(503, "feedback needs the prediction log: set serve.log (or IMGCLF_LOG)")
        body = await _read_body(request, FEEDBACK_MAX_BYTES)
        if body is None:
            return _problem(413, f"a feedback body is at most {FEEDBACK_MAX_BYTES} bytes")
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            return _problem(422, 'send JSON: {"id": "<prediction id>", "label": "<class>"}')
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not isinstance(body.get("label"), str):
            return _problem(422, 'send JSON: {"id": "<prediction id>", "label": "<class>"}, both strings')
        if body["label"] not in model.labels:
            return _problem(422, f"label {body['label']!r} is not one of the model's {len(model.labels)} classes")
        try:
            outcome = await run_in_threadpool(app.state.log.feedback, body["id"], body["label"])
        except UnknownPrediction:
            return _problem(404, f"no prediction with id {body['id']!r} in the log")
        except (sqlite3.Error, OSError, PipelineError) as error:
            log.error("prediction log %s: %s", app.state.log.path, error)
            return _problem(503, f"the prediction log cannot take feedback now: {error}")
        feedback_outcomes.labels(outcome).inc()
        outcome_counts[outcome] += 1
        return {"id": body["id"], "label": body["label"], "outcome": outcome}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app


app = create_app()


def main(argv: list[str] | None = None) -> int:
    """``python -m imgclf.serve`` (``make serve``): load the model, then serve it with uvicorn; a model
    that cannot be loaded is one line and exit status 1 (uvicorn alone would print a traceback)."""
    import argparse
    import sys

    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m imgclf.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines (a container)")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")

    try:
        settings = Settings.load()
        loaded = load_model(settings)
    except (ModelError, PipelineError) as error:
        print(f"imgclf.serve: error: {error}", file=sys.stderr)
        return 1
    uvicorn.run(create_app(settings, loaded), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
