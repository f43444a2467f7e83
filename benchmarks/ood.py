"""Does the service know when an image is of no class it was trained on? The unknown detectors side by side (#26).

    python benchmarks/ood.py                 # Fashion-MNIST (the repo's exported model) and a photo set (~8 min)
    python benchmarks/ood.py --skip-photos   # Fashion-MNIST only (a minute; needs `dvc repro` done)

**Fashion-MNIST**: the repository's exported model (``serve.variant``, after ``dvc repro``). In
distribution: the test split. Out of distribution: scikit-learn's digits (8 px, upscaled to 28 by the
pipeline's own ``prepare``), uniform noise in the model's input space, and crops of scikit-image's
photographs (``tests.photos.photo_crop``) through the same ``prepare``.

**A photo set**: ``tests.photos.photo_set`` with 6 classes (60 photos each, 10 test), run through
``dvc repro`` in a fresh copy with the README's photo params; out of distribution: crops of six
other photographs and noise.

Each detector of :mod:`imgclf.ship.ood` is fitted and thresholded as export does (training images,
threshold on the validation split, or out of fold when it is small), on the same variant's outputs.
AUROC: in-distribution test images against each other set (higher score = unknown). "unknown" is
the share called unknown at the threshold; for the test split, that is the in-distribution rate
(the target: at most 5 %). "ms / image": the median time of one detector scoring one image (as the
service does per answer), beside the model's own batch-1 call on the same machine.

Prints markdown tables; writes reports/bench/ood.{json,md} (not a DVC output).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import numpy as np
from sklearn.metrics import roc_auc_score

from imgclf.data.images import prepare
from imgclf.data.shards import read_split
from imgclf.io import read_json, write_json, write_text
from imgclf.params import load_section
from imgclf.paths import layout
from imgclf.ship import export, ood
from imgclf.ship.runtime import load_classifier

PHOTO_CLASSES = 6


def digits(size: int, mode: str) -> np.ndarray:
    from sklearn.datasets import load_digits

    images = (load_digits().images * (255 / 16)).round().astype(np.uint8)
    return np.stack([prepare(np.repeat(image[..., None], 3, axis=2), size, mode) for image in images])


def noise(count: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)


def photographs(names: list[str], count: int, size: int, mode: str, seed: int = 0) -> np.ndarray:
    from tests.photos import photo_crop

    rng = np.random.default_rng(seed)
    return np.stack([prepare(photo_crop(names[i % len(names)], rng), size, mode) for i in range(count)])


def compare(root: Path, variant: str, others: dict[str, np.ndarray], params: dict) -> dict:
    """Every detector fitted on the pipeline in ``root`` (its exported ``variant``), scored on its test
    split and on each set of ``others``."""
    from imgclf.train.models import load_trained

    paths = layout(root)
    classifier = load_classifier(paths.exported_model(variant))
    kernel_bias = export.last_layer(load_trained(paths))
    x_train, y_train = read_split(paths, "train", lazy=True)
    picks = np.sort(np.random.default_rng(int(params["seed"])).permutation(len(y_train))[: params["max_fit_images"]])
    train = (np.asarray(x_train[picks]), y_train[picks])
    val = read_split(paths, "val")
    x_test, _ = read_split(paths, "test")
    outputs = {name: classifier.predict_with_features(images) for name, images in others.items()}
    result = {"variant": variant, "test_images": len(x_test), "sets": {k: len(v) for k, v in others.items()},
              "model_ms_per_image": round(classifier.latency_ms(x_test, runs=300), 4)}  # fmt: skip
    test_outputs = classifier.predict_with_features(x_test)
    result["detectors"] = {}
    for name in ood.DETECTORS:
        detector, fitted = export.fit_unknown_detector(
            paths.exported_model(variant), train, val, x_test, params | {"detector": name}, kernel_bias
        )
        test_scores = detector.score(*test_outputs)
        row = {"threshold_from": fitted["threshold_from"], "test_unknown": fitted["test_unknown_rate"],
               "ms_per_image": round(score_ms(detector, *test_outputs), 4)}  # fmt: skip
        for other, (p, f) in outputs.items():
            scores = detector.score(p, f)
            truth = np.r_[np.zeros(len(test_scores)), np.ones(len(scores))]
            row[other] = {
                "auroc": round(float(roc_auc_score(truth, np.r_[test_scores, scores])), 4),
                "unknown": round(float(detector.unknown(scores).mean()), 4),
            }
        result["detectors"][name] = row
        print(f"  {name}: {row}", flush=True)
    return result


def score_ms(detector: ood.Detector, probabilities: np.ndarray, features: np.ndarray | None, runs: int = 300) -> float:
    """Median milliseconds of scoring one image, as the service scores each answer."""
    times = []
    for i in range(runs):
        j = i % len(probabilities)
        one = None if features is None else features[j : j + 1]
        start = time.perf_counter()
        detector.score(probabilities[j : j + 1], one)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def fashion_mnist(params: dict, variant: str) -> dict:
    from tests.photos import SKIMAGE_PHOTOS

    meta = read_json(layout(REPO_ROOT).preprocessed_meta)
    size, mode, shape = meta["image_size"], meta["color_mode"], tuple(meta["input_shape"])
    others = {
        "digits": digits(size, mode),
        "noise": noise(1000, shape),
        "photographs": photographs(list(SKIMAGE_PHOTOS), 1000, size, mode),
    }
    return {"model": "Fashion-MNIST (the repository's)", **compare(REPO_ROOT, variant, others, params)}


def photo_model(params: dict, variant: str, workdir: Path, timeout: float) -> dict:
    from photo_sets import PHOTO_PARAMS, bench_env, timed_repro

    from tests.photos import SKIMAGE_PHOTOS, photo_set
    from tests.pipeline_copy import new_repository

    source = photo_set(workdir / "photos", "folders_with_test", classes=PHOTO_CLASSES, per_class=60,
                       test_per_class=10, seed=4)  # fmt: skip
    root = new_repository(workdir / "repo")
    status, seconds, _ = timed_repro(
        root, {"ingest": {"source": str(source)}, **PHOTO_PARAMS}, bench_env(), timeout, workdir, "[photo set]"
    )
    if status != "ok":
        return {"model": "photo set", "status": status}
    size, mode = PHOTO_PARAMS["preprocess"]["image_size"], PHOTO_PARAMS["preprocess"]["color_mode"]
    unseen = list(SKIMAGE_PHOTOS[PHOTO_CLASSES : PHOTO_CLASSES + 6])
    others = {"other photographs": photographs(unseen, 300, size, mode), "noise": noise(300, (size, size, 3))}
    result = compare(root, variant, others, params)
    return {"model": f"photo set ({PHOTO_CLASSES} classes x 60)", "repro_s": round(seconds, 1), **result}


def to_markdown(results: dict) -> str:
    lines = [f"Unknown detectors ({results['date']}; `python benchmarks/ood.py`)", ""]
    for model in results["models"]:
        if "detectors" not in model:
            lines += [f"**{model['model']}**: {model.get('status')}", ""]
            continue
        sets = list(model["sets"])
        lines.append(f"**{model['model']}**, variant {model['variant']}, {model['test_images']} test images; "
                     + ", ".join(f"{k} {v}" for k, v in model["sets"].items()))  # fmt: skip
        lines.append("")
        lines.append("| detector | test called unknown | " + " | ".join(f"{s}: AUROC / unknown" for s in sets)
                     + " | ms / image |")  # fmt: skip
        lines.append("|---|---|" + "---|" * len(sets) + "---|")
        for name, row in model["detectors"].items():
            cells = [f"{row[s]['auroc']:.3f} / {row[s]['unknown']:.1%}" for s in sets]
            lines.append(
                f"| {name} | {row['test_unknown']:.1%} | " + " | ".join(cells) + f" | {row['ms_per_image']:.3f} |"
            )
        lines.append("")
        lines.append(f"The model's own batch-1 call: {model['model_ms_per_image']:.3f} ms per image.")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-photos", action="store_true", help="Fashion-MNIST only")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--keep", action="store_true", help="keep the photo set's pipeline copy")
    args = parser.parse_args()
    params = dict(load_section("export")["unknown"])
    variant = load_section("serve")["variant"]
    results = {"date": date.today().isoformat(), "models": [fashion_mnist(params, variant)]}
    print(to_markdown(results), flush=True)
    if not args.skip_photos:
        work = Path(tempfile.mkdtemp(prefix="imgclf-ood-bench-"))
        results["models"].append(photo_model(params, variant, work, args.timeout))
        print(to_markdown(results), flush=True)
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    out = REPO_ROOT / "reports" / "bench"
    write_json(out / "ood.json", results)
    write_text(out / "ood.md", to_markdown(results))


if __name__ == "__main__":
    main()
