"""The peer: keras.io's "Simple MNIST convnet" (fchollet), as published, on Fashion-MNIST.

https://keras.io/examples/vision/mnist_convnet/ : Conv32-pool-Conv64-pool-Flatten-Dropout-Dense,
Adam, batch 128, 15 epochs, validation_split=0.1, inputs scaled to [0, 1]. The only change is
the data: the same Fashion-MNIST IDX files our ingest stage reads. Prints one JSON line.

    python benchmarks/peer_simple_convnet.py [--epochs 15] [--limit N]
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from keras import layers

from imgclf.data.ingest import find_fashion_mnist, limit_per_class, load_fashion_mnist


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--limit", type=int, default=None, help="images per class per split (smoke runs)")
    args = parser.parse_args()

    data = load_fashion_mnist(find_fashion_mnist())
    train = (data.manifest["split"] == "train").to_numpy()
    labels = data.manifest["label"].map({n: i for i, n in enumerate(data.class_names)}).to_numpy()
    x_train, y_train = data.images[train], labels[train]
    x_test, y_test = data.images[~train], labels[~train]
    if args.limit:
        keep = limit_per_class(y_train, args.limit)
        x_train, y_train = x_train[keep], y_train[keep]

    # --- from the keras.io example ---
    num_classes, input_shape = 10, (28, 28, 1)
    x_train = np.expand_dims(x_train.astype("float32") / 255, -1)
    x_test = np.expand_dims(x_test.astype("float32") / 255, -1)
    y_train_1h = keras.utils.to_categorical(y_train, num_classes)
    model = keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(num_classes, activation="softmax"),
        ]
    )
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train_1h, batch_size=128, epochs=args.epochs, validation_split=0.1, verbose=0)
    train_seconds = time.perf_counter() - start
    # --- end of the example ---

    test_accuracy = float((model.predict(x_test, batch_size=1024, verbose=0).argmax(1) == y_test).mean())
    print(
        json.dumps(
            {"train_seconds": round(train_seconds, 2), "test_accuracy": round(test_accuracy, 4), "epochs": args.epochs}
        )
    )


if __name__ == "__main__":
    main()
