"""Epoch-start stalls: a new tf.data iterator every epoch against one repeated iterator for all epochs.

    python benchmarks/epoch_stall.py [--images 12800] [--epochs 6]

Trains the default network with ``model.fit`` twice on the same images (after ``dvc repro augment``):
once on the finite training dataset (Keras makes a new iterator each epoch), once on the same
dataset repeated, with ``steps_per_epoch`` (one iterator; what imgclf.train.training.fit does). Prints each
epoch's time and every pause of more than a second between two batches. Found while timing #13:
epoch times came out in multiples of ~5.1 s, and ``vmstat`` showed the CPU idle during the pauses.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras

from imgclf.params import read_file
from imgclf.paths import layout
from imgclf.train import training
from imgclf.train.models import build_model
from imgclf.train.plan import steps


class Pauses(keras.callbacks.Callback):
    """Epoch times, and gaps over a second between consecutive batches (the first batch included)."""

    def __init__(self):
        super().__init__()
        self.epochs, self.gaps = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = self.last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if now - self.last > 1.0:
            self.gaps.append(round(now - self.last, 1))
        self.last = now

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(round(time.perf_counter() - self.started, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12800)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    params = read_file()["train"]
    data = training.load_train_data(layout(), params["use_augmented"])
    x, y = data.x_train[: args.images], data.y_train[: args.images]
    batch = 256
    for repeat in (False, True):
        training.seed_everything(1)
        model = build_model("simple_cnn", x.shape[1:], 10, params)
        model.compile(optimizer="adamw", loss="categorical_crossentropy")
        dataset = training.train_dataset(x, y, 10, batch, 1, repeat=repeat)
        pauses = Pauses()
        steps_per_epoch = steps(len(x), batch) if repeat else None
        model.fit(
            dataset, epochs=args.epochs, steps_per_epoch=steps_per_epoch, callbacks=[pauses], verbose=0, shuffle=False
        )
        name = "one repeated iterator " if repeat else "a new iterator each epoch"
        print(f"{name}: epochs {pauses.epochs} s (sum {sum(pauses.epochs):.1f}), pauses > 1 s: {pauses.gaps}")


if __name__ == "__main__":
    main()
