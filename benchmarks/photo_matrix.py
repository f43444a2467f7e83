"""Where does the pipeline stop working on photos? A matrix of sets x image sizes x colour modes x set sizes (issue #23).

    python benchmarks/photo_matrix.py --quick             # a smoke run: one tiny cell (minutes on 2 cores)
    python benchmarks/photo_matrix.py                     # 3 sets x 4 sizes x 2 colours x 2 set sizes: 48 runs
    python benchmarks/photo_matrix.py --sets texture,fine --sizes 64 --colors rgb --per-class 30,150 --seeds 2 [--keep]

The sets (``tests.photos``, real photographs bundled with scikit-image, 200-400 px, JPEG and PNG,
layout ``folders_with_test``):

- ``easy``: :func:`~tests.photos.photo_set`, five photographs, one a class (astronaut, chelsea,
  coffee, rocket, hubble_deep_field), mild crops and light: colour alone nearly tells them apart.
- ``texture``: :func:`~tests.photos.texture_set`, brick, grass, gravel, text, coins under the hard
  variation (any angle, a wide scale, strong light, a colour cast): colour and an 8x8 thumbnail say little.
- ``fine``: :func:`~tests.photos.fine_set`, the four quarters of coffee (fine-grained: the same
  wood, cup and saucer, in a different mix), at any angle, under the hard light.

Axes: ``--sizes`` (preprocess.image_size), ``--colors`` (preprocess.color_mode), ``--per-class``
(training images a class) and ``--seeds N`` (each cell repeated with generator seeds 1..N). Every
cell has a labelled test split of at least ``--test-n`` (100) images: ceil(test-n / classes) a class.
A set is generated once per (set, per class, test per class, seed) and shared by its sizes and
colours; each cell gets a fresh pipeline copy (``tests.pipeline_copy.new_repository``) with
ingest.source, preprocess.image_size and preprocess.color_mode set, nothing else (the shipped
defaults are what is measured), then ``dvc repro``, timed. Read back: test and baseline accuracy
(reports/eval/metrics.json), the last epoch's training accuracy (reports/train/history.csv), the learning
rate and stall/restart information when reports/train/plan.json has them (``learning_rate``;
``stall``, else ``restarts``: the stalled attempts; '-' otherwise), and a
verdict: ``chance`` when the test accuracy is not above chance (1/classes) beyond the one-sided 95%
binomial bound for that many test images, ``below baseline`` when it is under the baseline's, else
``ok``. A failed ``dvc repro`` is a row with its error line. Progress goes to stderr; the table and
reports/bench/photo_matrix.{json,md} (not a DVC output) are rewritten after every cell.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import pandas as pd
from scipy.stats import binom

from benchmarks.photo_sets import STAGE_DONE, bench_env, flatten, fmt, read_json, read_results, timed_repro
from imgclf.io import write_json, write_text
from imgclf.paths import layout
from tests.photos import FINE_CLASSES, TEXTURE_CLASSES, fine_set, photo_set, skimage_classes, texture_set, truth_path
from tests.pipeline_copy import new_repository

LAYOUT = "folders_with_test"
EASY_CLASSES = tuple(skimage_classes(5))
# name -> (classes, generator(root, per_class, test_per_class, seed), description)
SETS = {
    "easy": (
        EASY_CLASSES,
        lambda root, per_class, test, seed: photo_set(root, LAYOUT, list(EASY_CLASSES), per_class, test, seed=seed),
        "5 photographs, one a class, mild crops and light",
    ),
    "texture": (
        TEXTURE_CLASSES,
        lambda root, per_class, test, seed: texture_set(root, per_class, test, LAYOUT, seed=seed),
        "5 textures (brick, grass, gravel, text, coins), any angle, wide scale, strong light, colour cast",
    ),
    "fine": (
        FINE_CLASSES,
        lambda root, per_class, test, seed: fine_set(root, per_class, test, LAYOUT, seed=seed),
        "4 quarters of one photograph (coffee), any angle, strong light, colour cast",
    ),
}
AXES = {"sets": list(SETS), "sizes": [32, 64, 128, 224], "colors": ["rgb", "grayscale"], "per_class": [30, 150]}
QUICK_AXES = {"sets": ["fine"], "sizes": [32], "colors": ["rgb"], "per_class": [30]}
COLORS = ("rgb", "grayscale")


def per_class_for_test(classes: int, test_n: int) -> int:
    """Labelled test images a class for at least ``test_n`` in all."""
    return math.ceil(test_n / classes)


def chance_bound(n: int, classes: int, level: float = 0.95) -> float:
    """The accuracy a guesser (1/classes) stays at or under with probability ``level`` on ``n`` images."""
    return float(binom.ppf(level, n, 1 / classes)) / n


def verdict(accuracy: float | None, baseline: float | None, n: int | None, classes: int) -> str:
    if accuracy is None or not n:
        return "-"
    if accuracy <= chance_bound(n, classes):
        return "chance"
    if baseline is not None and accuracy < baseline:
        return "below baseline"
    return "ok"


def stall_text(restarts) -> str:
    """plan.json's ``restarts`` (the stalled attempts, each restarted at a lower learning rate) in a few words."""
    if restarts is None:
        return "-"
    if not restarts:
        return "no"
    rates = ", ".join(fmt(r.get("learning_rate"), ".3g") for r in restarts)
    return f"stalled, restarted {len(restarts)}x (lr {rates})"


def training_reports(root: Path) -> dict:
    """The last epoch's training accuracy (history.csv) and what plan.json says of learning rate and stalls."""
    paths = layout(root)
    train_accuracy = None
    if paths.history.exists():
        history = pd.read_csv(paths.history)
        if "accuracy" in history.columns and len(history):
            train_accuracy = float(history["accuracy"].iloc[-1])
    plan = read_json(paths.train_reports / "plan.json") or {}
    metrics = read_json(paths.eval_detail) or {}
    ship = read_json(paths.eval_verdict) or {}
    return {
        "train_accuracy": train_accuracy,
        "learning_rate": plan.get("learning_rate"),
        "restarts": plan.get("restarts"),
        "epochs_planned": plan.get("epochs"),
        "network_below_baseline": (metrics.get("baseline") or {}).get("network_below_baseline"),
        "fit_to_ship": ship.get("fit_to_ship"),
    }


def run_cell(cell: dict, source: Path, workdir: Path, env: dict, timeout: float, tag: str) -> dict:
    """A fresh pipeline copy on ``source`` with this cell's size and colour; ``dvc repro``; what it measured."""
    root = new_repository(workdir / "repo")
    params_set = {
        "ingest": {"source": str(source)},
        "preprocess": {"image_size": cell["size"], "color_mode": cell["color"]},
    }
    status, seconds, output = timed_repro(root, params_set, env, timeout, workdir, tag)
    results = {**read_results(root, truth_path(source)), **training_reports(root)}
    row = {
        **cell,
        "params_set": flatten(params_set),
        "status": status,
        "repro_s": round(seconds, 1),
        "stages_s": {m["stage"]: float(m["seconds"]) for m in STAGE_DONE.finditer(output)},
        **results,
        "chance": round(1 / cell["classes"], 4),
        "chance_bound95": round(chance_bound(results["test_n"], cell["classes"]), 4) if results["test_n"] else None,
        "verdict": verdict(results["test_accuracy"], results["baseline_accuracy"], results["test_n"], cell["classes"]),
        "workdir": str(workdir),
    }
    print(
        f"{tag} {status} ({seconds:.0f} s): test {fmt(row['test_accuracy'])}, baseline "
        f"{fmt(row['baseline_accuracy'])}, train {fmt(row['train_accuracy'])}, {row['verdict']}",
        file=sys.stderr,
        flush=True,
    )
    return row


def table_row(r: dict) -> str:
    cells = [
        f"`{r['set']}`",
        str(r["size"]),
        r["color"],
        str(r["per_class"]),
        str(r["seed"]),
        fmt(r["test_n"], "d"),
        fmt(r["test_accuracy"]),
        fmt(r["baseline_accuracy"]),
        fmt(r["train_accuracy"]),
        fmt(r["learning_rate"], ".3g") if not isinstance(r["learning_rate"], str) else r["learning_rate"],
        stall_text(r["restarts"]),
        f"{r['repro_s']:.0f}",
        r["verdict"],
        {True: "yes", False: "**no**", None: "-"}[r.get("fit_to_ship")],
        r["status"].replace("|", "/"),
    ]
    return "| " + " | ".join(cells) + " |"


def to_markdown(result: dict) -> str:
    legend = [f"- `{name}`: {len(classes)} classes, {about}" for name, (classes, _, about) in SETS.items()]
    return "\n".join(
        [
            f"Real-photo matrix (skimage photographs, 200-400 px, layout {LAYOUT}), `dvc repro` from clean per cell, "
            f"{result['machine']}, {result['date']}. Params set per cell: ingest.source, preprocess.image_size, "
            "preprocess.color_mode; everything else the shipped defaults. Verdict: `chance` = test accuracy within "
            "the one-sided 95% binomial bound of 1/classes; `below baseline` = under the 8x8-thumbnail baseline.",
            "",
            "| set | size | colour | per class | seed | test n | test acc | baseline acc | train acc (last epoch) "
            "| learning rate | stalled / restarted | repro s | verdict | fit to ship (evaluate) | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *(table_row(r) for r in result["rows"]),
            "",
            *legend,
        ]
    )


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def str_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=str_list, help=f"comma-separated, from: {', '.join(SETS)} (default: all)")
    parser.add_argument("--sizes", type=int_list, help="preprocess.image_size values (default: 32,64,128,224)")
    parser.add_argument("--colors", type=str_list, help="preprocess.color_mode values (default: rgb,grayscale)")
    parser.add_argument("--per-class", type=int_list, help="training images a class (default: 30,150)")
    parser.add_argument("--test-n", type=int, default=100, help="at least this many labelled test images a cell")
    parser.add_argument("--seeds", type=int, default=1, help="repeat every cell with generator seeds 1..N")
    parser.add_argument("--quick", action="store_true", help="one tiny cell (fine, 32 px, rgb, 30 a class)")
    parser.add_argument(
        "--cells",
        type=str_list,
        help="explicit cells SET:SIZE:COLOR:PER_CLASS (e.g. texture:128:rgb:48), instead of the axes' product",
    )
    parser.add_argument("--append", action="store_true", help="add the rows to the existing photo_matrix.json")
    parser.add_argument("--keep", action="store_true", help="keep the generated sets and pipeline copies")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per dvc repro")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "bench")
    args = parser.parse_args()

    defaults = QUICK_AXES if args.quick else AXES
    axes = {axis: getattr(args, axis) or defaults[axis] for axis in AXES}
    unknown = [name for name in axes["sets"] if name not in SETS]
    if unknown:
        parser.error(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}")
    if any(color not in COLORS for color in axes["colors"]):
        parser.error(f"--colors: from {', '.join(COLORS)}")
    if args.seeds < 1 or args.test_n < 1 or min(axes["per_class"]) < 1 or min(axes["sizes"]) < 1:
        parser.error("--seeds, --test-n, --per-class and --sizes must be positive")

    env = bench_env()
    if args.cells:
        try:
            explicit = [
                (name, int(size), color, int(per_class))
                for name, size, color, per_class in (cell.split(":") for cell in args.cells)
            ]
        except ValueError:
            parser.error("--cells: SET:SIZE:COLOR:PER_CLASS, e.g. texture:128:rgb:48")
        if any(name not in SETS or color not in COLORS for name, _, color, _ in explicit):
            parser.error(f"--cells: sets from {', '.join(SETS)}, colours from {', '.join(COLORS)}")
    else:
        explicit = [
            (name, size, color, per_class)
            for name, per_class, size, color in itertools.product(
                axes["sets"], axes["per_class"], axes["sizes"], axes["colors"]
            )
        ]
    groups: dict[tuple, list[tuple[int, str]]] = {}
    for seed in range(1, args.seeds + 1):
        for name, size, color, per_class in explicit:
            groups.setdefault((seed, name, per_class), []).append((size, color))
    total = sum(len(cells) for cells in groups.values())
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "axes": {**axes, "seeds": list(range(1, args.seeds + 1)), "test_n": args.test_n},
        "layout": LAYOUT,
        "quick": args.quick,
        "rows": [],
    }
    previous = read_json(args.out / "photo_matrix.json") if args.append else None
    if previous:
        result["rows"] = previous["rows"]
    tmp = Path(tempfile.mkdtemp(prefix="imgclf-photo-matrix-"))
    print(f"{total} cells in {tmp}", file=sys.stderr, flush=True)
    try:
        for (seed, name, per_class), sizes_colors in groups.items():
            classes, generate, _ = SETS[name]
            per_test = per_class_for_test(len(classes), args.test_n)
            set_id = f"{name}-{per_class}x{per_test}-seed{seed}"
            start = time.perf_counter()
            source = generate(tmp / "sets" / set_id, per_class, per_test, seed)
            print(f"generated {set_id} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
            for size, color in sizes_colors:
                cell = {
                    "set": name,
                    "classes": len(classes),
                    "size": size,
                    "color": color,
                    "per_class": per_class,
                    "test_per_class": per_test,
                    "seed": seed,
                }
                workdir = tmp / "cells" / f"{set_id}-{size}px-{color}"
                tag = f"[{len(result['rows']) + 1}/{total} {name} {size}px {color} {per_class}/class seed {seed}]"
                result["rows"].append(run_cell(cell, source, workdir, env, args.timeout, tag))
                if not args.keep:
                    shutil.rmtree(workdir / "repo", ignore_errors=True)  # 224 px data and models add up
                write_json(args.out / "photo_matrix.json", result)
                write_text(args.out / "photo_matrix.md", to_markdown(result) + "\n")
    finally:
        if args.keep:
            print(f"kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    markdown = to_markdown(result)
    write_json(args.out / "photo_matrix.json", result)
    write_text(args.out / "photo_matrix.md", markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
