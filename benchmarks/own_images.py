"""Benchmark the own-images data stages: throughput on 1 vs all cores, and peak memory.

    python benchmarks/own_images.py [--images 3000] [--size 640x480] [--repeats 3] [--all-cores-only]

Generates a class-folder dataset of photo-sized JPEGs in a temporary folder, then times ingest
(list + stream-pack), validate (decode, inspect, pHash, rules) and preprocess (decode + resize to
96 px, written as shards) with 1 worker and with all cores, each in a fresh process so that its
peak resident memory (the process and its workers) is measured alone, and the disk each phase's
output takes. Prints a table of medians and writes it to reports/bench/own_images.{json,md} (not
a DVC output). The scale run in docs/pipeline.md: ``--images 100000 --size 320x240 --repeats 1
--all-cores-only``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from imgclf.io import write_json, write_text

PHASES = ("ingest", "validate", "preprocess")


def generate(root: Path, count: int, width: int, height: int) -> int:
    import numpy as np

    from tests.photos import CLASSES, photo, save

    rng = np.random.default_rng(0)
    total = 0
    for i in range(count):
        label = CLASSES[i % len(CLASSES)]
        total += save(root / label / f"{i:06d}.jpg", photo(label, rng, height, width)).stat().st_size
    return total


def run_phase(phase: str, source: str, out: str, workers: int) -> None:
    """One phase in this process; prints seconds and peak RSS (MiB) of the process and its workers."""
    from imgclf.data.ingest import ingest, read_ingested
    from imgclf.data.preprocess import shard_order, write_split
    from imgclf.data.validation import validate
    from imgclf.params import load_section
    from imgclf.paths import Layout

    layout = Layout(Path(out))
    start = time.perf_counter()
    if phase == "ingest":
        ingest({**load_section("ingest", REPO_ROOT / "params.yaml"), "source": source, "workers": workers}, layout)
    else:
        reader, manifest, meta = read_ingested(layout)
        if phase == "validate":
            options = {**load_section("validate", REPO_ROOT / "params.yaml"), "near_duplicate_distance": 4}
            validate(manifest, reader, meta["class_names"], options, workers=workers)
        else:
            rows = shard_order(manifest[manifest["problem_rule"] == ""].assign(label_index=0))
            write_split(reader, rows, layout.preprocessed_split("train"), 96, "rgb", workers=workers)
    seconds = time.perf_counter() - start
    peak_kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    output = {"ingest": layout.ingested, "validate": None, "preprocess": layout.preprocessed}[phase]
    disk = sum(f.stat().st_size for f in output.rglob("*") if f.is_file()) if output else 0
    print(json.dumps({"seconds": seconds, "peak_mib": peak_kib / 1024, "disk_mib": disk / 2**20}))


def measure(phase: str, source: Path, out: Path, workers: int) -> dict:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "IMGCLF_LOG_LEVEL": "WARNING", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, __file__, "--phase", phase, "--source", str(source), "--work", str(out)]
    result = subprocess.run([*cmd, "--workers", str(workers)], capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--all-cores-only", action="store_true", help="skip the 1-worker runs (large sets)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "bench")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        run_phase(args.phase, args.source, args.work, args.workers)
        return

    width, height = (int(n) for n in args.size.split("x"))
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="imgclf-own-bench-") as tmp:
        source = Path(tmp) / "photos"
        dataset_bytes = generate(source, args.images, width, height)
        for workers in [cores] if args.all_cores_only else sorted({1, cores}):
            runs = {phase: [] for phase in PHASES}
            for repeat in range(args.repeats):
                work = Path(tmp) / f"w{workers}-{repeat}"
                for phase in PHASES:  # in order: each phase reads the previous one's output
                    runs[phase].append(measure(phase, source, work, workers))
            for phase in PHASES:
                seconds = statistics.median(r["seconds"] for r in runs[phase])
                rows.append(
                    {
                        "phase": phase,
                        "workers": workers,
                        "median_s": round(seconds, 2),
                        "images_per_s": round(args.images / seconds, 1),
                        "peak_mib": round(max(r["peak_mib"] for r in runs[phase]), 1),
                        "disk_mib": round(runs[phase][-1]["disk_mib"], 1),
                    }
                )
    single = {r["phase"]: r["median_s"] for r in rows if r["workers"] == 1}
    for row in rows:
        row["speedup_vs_1"] = round(single[row["phase"]] / row["median_s"], 2) if single else ""
    result = {
        "date": date.today().isoformat(),
        "machine": f"{os.uname().machine}, {cores} cores",
        "images": args.images,
        "size": args.size,
        "dataset_mib": round(dataset_bytes / 2**20, 1),
        "repeats": args.repeats,
        "rows": rows,
    }
    lines = [
        f"Own-images data stages, {args.images} JPEGs of {args.size} ({result['dataset_mib']} MiB), "
        f"{result['machine']}, {result['date']}, median of {args.repeats}",
        "",
        "| phase | workers | median s | images/s | speed-up vs 1 | peak RSS MiB | output on disk MiB |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['phase']} | {r['workers']} | {r['median_s']} | {r['images_per_s']} | {r['speedup_vs_1']} "
            f"| {r['peak_mib']} | {r['disk_mib']} |"
            for r in rows
        ],
    ]
    write_json(args.out / "own_images.json", result)
    write_text(args.out / "own_images.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
