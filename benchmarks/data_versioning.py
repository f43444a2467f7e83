"""Benchmark what a small change to your photos costs in DVC's cache (and so in a DVC remote).

    python benchmarks/data_versioning.py [--per-class 500] [--classes 6]

In a fresh git + DVC repository holding a copy of the pipeline, puts a set of real-photograph
crops (``tests.photos.photo_set``; 6 x 500 = 3,000 by default) under ``data/raw/photos``,
``dvc add``s it and runs the data stages (``dvc repro augment``). Then, one after the other, adds
one photo, relabels one (moves it to another class folder) and removes one; after each,
``dvc add`` + ``dvc repro augment`` as a user would, and measures how much ``.dvc/cache`` grew.
The issue's target: under 5 % of the dataset's size per change. Prints a table and writes it
to reports/bench/data_versioning.{json,md} (not a DVC output).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from imgclf.io import write_json, write_text
from tests.conftest import set_params
from tests.photos import photo_set
from tests.pipeline_copy import new_repository

SOURCE = "data/raw/photos"


def sh(cmd: list[str], root: Path) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env |= {"PYTHONPATH": str(root), "NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - start


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "bench")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="imgclf-versioning-") as tmp:
        root = new_repository(Path(tmp) / "repo")
        photos = photo_set(root / SOURCE, "folders", classes=args.classes, per_class=args.per_class, seed=0)
        spare = photo_set(Path(tmp) / "spare", "folders", classes=args.classes, per_class=1, seed=99)
        set_params(
            root,
            ingest={"source": SOURCE},
            validate={"min_per_class": 10},
            preprocess={"image_size": 64, "color_mode": "rgb"},
        )
        cache = root / ".dvc" / "cache"
        dataset = folder_bytes(photos)
        count = sum(1 for f in photos.rglob("*") if f.is_file())
        sh(["dvc", "add", SOURCE], root)
        raw_cache = folder_bytes(cache)
        first_s = sh(["dvc", "repro", "augment"], root)
        derived = folder_bytes(cache) - raw_cache

        classes = sorted(p.name for p in photos.iterdir() if p.is_dir())
        new_photo = next(f for f in sorted(spare.rglob("*")) if f.is_file())
        moved = sorted((photos / classes[0]).iterdir())[0]
        removed = sorted((photos / classes[1]).iterdir())[0]
        changes = {
            "add one photo": lambda: shutil.copy(new_photo, photos / new_photo.parent.name / f"new_{new_photo.name}"),
            "relabel one photo": lambda: moved.rename(photos / classes[-1] / moved.name),
            "remove one photo": removed.unlink,
        }
        rows = []
        for name, apply in changes.items():
            apply()
            before = folder_bytes(cache)
            seconds = sh(["dvc", "add", SOURCE], root) + sh(["dvc", "repro", "augment"], root)
            grown = folder_bytes(cache) - before
            rows.append(
                {
                    "change": name,
                    "cache_growth_kib": round(grown / 1024, 1),
                    "percent_of_dataset": round(100 * grown / dataset, 2),
                    "percent_of_data_stage_outputs": round(100 * grown / derived, 2),
                    "seconds": round(seconds, 1),
                }
            )

    result = {
        "date": date.today().isoformat(),
        "machine": f"{os.uname().machine}, {os.cpu_count()} cores",
        "photos": count,
        "dataset_mib": round(dataset / 2**20, 1),
        "data_stage_outputs_mib": round(derived / 2**20, 1),
        "first_repro_s": round(first_s, 1),
        "rows": rows,
    }
    lines = [
        f"DVC cache growth per change: {count} photos ({result['dataset_mib']} MiB) under {SOURCE}, "
        f"data stages (ingest..augment, 64 px RGB) storing {result['data_stage_outputs_mib']} MiB; "
        f"{result['machine']}, {result['date']}",
        "",
        "| change | cache growth KiB | % of the dataset | % of the data stages' outputs | dvc add + repro, s |",
        "|---|---|---|---|---|",
        *[
            f"| {r['change']} | {r['cache_growth_kib']} | {r['percent_of_dataset']} | "
            f"{r['percent_of_data_stage_outputs']} | {r['seconds']} |"
            for r in rows
        ],
    ]
    write_json(args.out / "data_versioning.json", result)
    write_text(args.out / "data_versioning.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
