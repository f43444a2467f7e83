"""Does mixed_bfloat16 (``train.mixed_precision: bf16``) pay on this CPU? Epoch times against float32.

The default ``simple_cnn`` (params.yaml's ``train.simple_cnn``) on a Fashion-MNIST subset, batch 256,
trained for a few epochs under each policy, each run in its own process (the policy is global, and
oneDNN picks its kernels once), the policies alternating so that a drift in the machine's load hits
both alike. Prints the median steady epoch time (the first epoch, which traces, left out) and the
test accuracy per policy, then the ratio.

    python benchmarks/precision.py [--epochs 4] [--repeats 3] [--per-class 600]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
POLICIES = ("float32", "mixed_bfloat16")


def child(policy: str, epochs: int, per_class: int) -> None:
    """One training under ``policy``; prints one JSON line."""
    import keras
    import yaml

    from imgclf.data.ingest import find_fashion_mnist, limit_per_class, load_fashion_mnist
    from imgclf.paths import REPO_ROOT
    from imgclf.train import training
    from imgclf.train.models import build_model

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["train"]
    data = load_fashion_mnist(find_fashion_mnist(download=False), limit=per_class)
    labels = data.manifest["label"].map({n: i for i, n in enumerate(data.class_names)}).to_numpy()
    train = (data.manifest["split"] == "train").to_numpy()
    x, y = data.images[..., None], labels  # (N, 28, 28, 1) uint8, as preprocess writes grayscale
    keep = limit_per_class(y[~train], 100)
    x_test, y_test = x[~train][keep], y[~train][keep]

    keras.utils.set_random_seed(42)
    keras.mixed_precision.set_global_policy(policy)
    model = build_model("simple_cnn", x.shape[1:], 10, params)
    rate = params["learning_rate"]  # a throughput benchmark: auto's range test would only add noise
    training.compile_model(model, params, 0.0087 if rate == "auto" else float(rate))
    dataset = training.train_dataset(x[train], y[train], 10, 256, 42)

    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(dataset, epochs=epochs, callbacks=[Timer()], verbose=0)
    accuracy = float((model.predict(x_test, batch_size=512, verbose=0).argmax(1) == y_test).mean())
    print(json.dumps({"policy": policy, "images": int(train.sum()), "epoch_s": times, "test_accuracy": accuracy}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4, help="per run; the first is left out of the timing")
    parser.add_argument("--repeats", type=int, default=3, help="runs per policy")
    parser.add_argument("--per-class", type=int, default=600, help="training images per class")
    parser.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.epochs, args.per_class)
        return

    runs: dict[str, list[dict]] = {p: [] for p in POLICIES}
    for repeat in range(args.repeats):
        for policy in POLICIES if repeat % 2 == 0 else POLICIES[::-1]:
            cmd = [sys.executable, __file__, "--child", policy, "--epochs", str(args.epochs)]
            result = subprocess.run([*cmd, "--per-class", str(args.per_class)], capture_output=True, text=True)
            if result.returncode:
                sys.exit(f"{policy} run failed:\n{result.stderr[-3000:]}")
            runs[policy].append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(
                f"run {repeat + 1} {policy}: epochs {[round(t, 2) for t in runs[policy][-1]['epoch_s']]} s", flush=True
            )

    medians = {}
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {runs['float32'][0]['images']} images"
    )
    print("policy          steady epoch s (median)   first epoch s   test accuracy (median)")
    for policy, results in runs.items():
        medians[policy] = statistics.median(t for r in results for t in r["epoch_s"][1:])
        first = statistics.median(r["epoch_s"][0] for r in results)
        accuracy = statistics.median(r["test_accuracy"] for r in results)
        print(f"{policy:<15} {medians[policy]:>24.3f} {first:>15.2f} {accuracy:>24.4f}")
    print(f"mixed_bfloat16 / float32 epoch time: {medians['mixed_bfloat16'] / medians['float32']:.2f}")


if __name__ == "__main__":
    main()
