"""One training on the pipeline's current arrays with train params overridden; test accuracy without DVC.

    python benchmarks/train_variant.py NAME [train.key=value ...]     # after dvc repro augment
    python benchmarks/train_variant.py b128 epochs=8 batch_size=128 simple_cnn.dense=128 simple_cnn.dropout.1=0.2

For comparing training recipes quickly (benchmarks/NOTES.md): the train stage's own plan and fit
(imgclf.train.training, early stopping off so every variant runs its whole schedule) on the augmented
training split, then accuracy on the test split, plain and with horizontal-flip averaging.
Nothing is tracked: a JSON line is printed and appended to reports/bench/train_variants.jsonl
(git-ignored).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from imgclf.data.shards import read_split
from imgclf.params import read_file
from imgclf.paths import layout
from imgclf.train import training
from imgclf.train.models import build_model
from imgclf.train.plan import plan_training
from imgclf.train.tune import with_values


def main() -> None:
    name, overrides = sys.argv[1], sys.argv[2:]
    values = {}
    for override in overrides:  # the search's dotted keys: train.simple_cnn.dropout.1=0.2
        key, value = override.split("=", 1)
        values[key if key.startswith("train.") else f"train.{key}"] = yaml.safe_load(value)
    params = with_values(read_file()["train"], values)  # checked against the train schema
    paths = layout()
    data = training.load_train_data(paths, params["use_augmented"])
    plan = plan_training(params, len(data.x_train), data.y_val, len(data.class_names))
    training.seed_everything(int(params["seed"]))
    training.set_precision(params["mixed_precision"])
    model = build_model(params["model"], data.x_train.shape[1:], len(data.class_names), params)
    plan, _ = training.resolve_learning_rate(model, data, params, plan)
    training.compile_model(model, params, training.learning_rate(params, plan.total_steps, plan.learning_rate))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        training.fit(
            model, data, {**params, "early_stopping_patience": 0}, plan, Path(tmp) / "run", Path(tmp) / "h.csv"
        )
        train_s = time.perf_counter() - started
        history = training.read_history(Path(tmp) / "h.csv")
    x, y = read_split(paths, "test", empty="run dvc repro preprocess")
    plain = model.predict(x, batch_size=512, verbose=0)
    flipped = model.predict(x[:, :, ::-1], batch_size=512, verbose=0)
    result = {
        "name": name,
        "overrides": overrides,
        "batch_size": plan.batch_size,
        "epochs": plan.epochs,
        "train_s": round(train_s, 1),
        "epoch_s": history["epoch_time_s"].round(1).tolist(),
        "val_accuracy": history["val_accuracy"].round(4).tolist(),
        "test_accuracy": float((plain.argmax(1) == y).mean()),
        "test_accuracy_flip_averaged": float((((plain + flipped) / 2).argmax(1) == y).mean()),
    }
    print(json.dumps(result))
    out = paths.root / "reports" / "bench" / "train_variants.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as file:
        file.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
