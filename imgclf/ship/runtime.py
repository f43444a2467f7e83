"""Running an exported model: LiteRT for .tflite, onnxruntime for .onnx, behind one small interface.

``predict(images)`` takes uint8 images (N, H, W, C) as the model card describes and returns
float probabilities (N, classes); ``predict_with_features`` adds the penultimate features, the
export's second output (``None`` for a file exported before it had one), which the
out-of-distribution detector reads (:mod:`imgclf.ship.ood`); ``latency_ms`` times batch-1 calls. Only NumPy and the two
runtimes are imported, so the HTTP service and the slim container need no TensorFlow.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

SUFFIXES = (".tflite", ".onnx")
PROBABILITIES, FEATURES = "probabilities", "features"  # the exported model's output names


def _median_ms(call, images: np.ndarray, runs: int, warmup: int) -> float:
    times = []
    for i in range(warmup + runs):
        image = images[i % len(images)][None]
        start = time.perf_counter()
        call(image)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


class TFLiteClassifier:
    """Runs a .tflite classifier with LiteRT: uint8 images in, float probabilities out."""

    def __init__(self, path: str | Path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        # outputs by name (the signature's), since their tensor order is the converter's choice; a file
        # with one output (exported before features were added) has probabilities only
        named = {}
        if signatures := self.interpreter.get_signature_list():
            runner = self.interpreter.get_signature_runner(next(iter(signatures)))
            named = {name: details["index"] for name, details in runner.get_output_details().items()}
        outputs = self.interpreter.get_output_details()
        if len(outputs) > 1 and PROBABILITIES not in named:
            raise ValueError(
                f"{self.path}: {len(outputs)} outputs and none named {PROBABILITIES!r}: not a file export-tflite wrote"
            )
        self._probabilities = named.get(PROBABILITIES, outputs[0]["index"])
        self._features = named.get(FEATURES) if len(outputs) > 1 else None
        self._output = self._details(self._probabilities)
        self._batch = int(self._input["shape"][0])

    def _details(self, index: int) -> dict:
        return next(d for d in self.interpreter.get_output_details() if d["index"] == index)

    @property
    def has_features(self) -> bool:
        return self._features is not None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._input["shape"][1:])

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            self.interpreter.resize_tensor_input(self._input["index"], [batch, *self.input_shape])
            self.interpreter.allocate_tensors()
            self._input = self.interpreter.get_input_details()[0]
            self._output = self._details(self._probabilities)
            self._batch = batch

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        dtype = self._input["dtype"]
        scale, zero_point = self._input["quantization"]
        if dtype == np.uint8 or not scale:
            return images.astype(dtype)
        return np.clip(np.round(images / scale + zero_point), np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)

    def _read(self, details: dict) -> np.ndarray:
        out = self.interpreter.get_tensor(details["index"])
        scale, zero_point = details["quantization"]
        out = (out.astype(np.float32) - zero_point) * scale if scale else out.astype(np.float32)
        return out.reshape(len(out), -1)

    def predict_with_features(self, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
        probabilities, features = [], []
        for start in range(0, len(images), batch_size):
            batch = np.asarray(images[start : start + batch_size])
            self._resize(len(batch))
            self.interpreter.set_tensor(self._input["index"], self._prepare(batch))
            self.interpreter.invoke()
            probabilities.append(self._read(self._output))
            if self.has_features:
                features.append(self._read(self._details(self._features)))
        if not probabilities:
            probabilities = [np.empty((0, self._output["shape"][-1]), np.float32)]
            features = [np.empty((0, 0), np.float32)] if self.has_features else []
        return np.concatenate(probabilities), (np.concatenate(features) if self.has_features else None)

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return self.predict_with_features(images, batch_size)[0]

    def latency_ms(self, images: np.ndarray, runs: int = 100, warmup: int = 10) -> float:
        """Median wall time of one batch-1 invoke, in milliseconds."""
        self._resize(1)

        def invoke(image: np.ndarray) -> None:
            self.interpreter.set_tensor(self._input["index"], self._prepare(image))
            self.interpreter.invoke()

        return _median_ms(invoke, images, runs, warmup)


class OnnxClassifier:
    """Runs a .onnx classifier (Keras' ``model.export(format="onnx")``) with onnxruntime on the CPU."""

    def __init__(self, path: str | Path, num_threads: int | None = None):
        import onnxruntime

        self.path = Path(path)
        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0]
        self._dtype = np.uint8 if self._input.type == "tensor(uint8)" else np.float32
        names = [output.name for output in self.session.get_outputs()]
        if len(names) > 1 and PROBABILITIES not in names:
            raise ValueError(
                f"{self.path}: outputs {names}, none named {PROBABILITIES!r}: not a file export-tflite wrote"
            )
        self._outputs = [PROBABILITIES if PROBABILITIES in names else names[0]]
        if FEATURES in names and len(names) > 1:
            self._outputs.append(FEATURES)

    @property
    def has_features(self) -> bool:
        return len(self._outputs) > 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._input.shape[1:])

    def _run(self, images: np.ndarray) -> list[np.ndarray]:
        outputs = self.session.run(self._outputs, {self._input.name: np.asarray(images).astype(self._dtype)})
        return [np.asarray(out, np.float32).reshape(len(out), -1) for out in outputs]

    def predict_with_features(self, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
        runs = [self._run(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
        if not runs:
            return np.empty((0, 0), np.float32), (np.empty((0, 0), np.float32) if self.has_features else None)
        probabilities = np.concatenate([run[0] for run in runs])
        return probabilities, (np.concatenate([run[1] for run in runs]) if self.has_features else None)

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return self.predict_with_features(images, batch_size)[0]

    def latency_ms(self, images: np.ndarray, runs: int = 100, warmup: int = 10) -> float:
        """Median wall time of one batch-1 call, in milliseconds."""
        return _median_ms(self._run, images, runs, warmup)


def load_classifier(path: str | Path, num_threads: int | None = None) -> TFLiteClassifier | OnnxClassifier:
    """The runner for ``path`` by its suffix."""
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxClassifier(path, num_threads)
    if path.suffix == ".tflite":
        return TFLiteClassifier(path, num_threads)
    raise ValueError(f"{path}: not a model file this pipeline exports ({', '.join(SUFFIXES)})")
