"""Stage augment: the training split -> augment.copies seeded augmented copies (sharded), the policy and a preview."""

import logging

import numpy as np

from imgclf.data.augmentation import build_policy, materialize, preview_grid, save_policy, source_rows
from imgclf.data.shards import read_split, write_sharded
from imgclf.io import read_json
from imgclf.stage import run_stage

log = logging.getLogger(__name__)


def main(params, paths):
    lazy, y = read_split(paths, "train", empty="nothing to augment (see reports/validation.md)", lazy=True)
    x, shards = np.asarray(lazy), lazy.row_shards()
    class_names = read_json(paths.preprocessed_meta)["class_names"]
    policy = build_policy(params["policy"], x.shape[1:3])
    save_policy(policy, paths.augment_policy)
    copies, seed = int(params["copies"]), int(params["seed"])
    log.info("augmenting %d training images x %d copies with %d transforms", len(x), copies, len(policy.transforms))
    augmented = materialize(policy, x, copies, seed, params["workers"], groups=shards)
    source = source_rows(shards, copies)
    write_sharded(paths.augmented, "x", shards[source], [augmented], x.shape[1:])
    write_sharded(paths.augmented, "y", shards[source], [y[source]], (), dtype=np.int64)

    # preview: a few originals, one per class where possible, beside up to 4 fresh augmentations
    rng = np.random.default_rng(seed)
    firsts = [np.flatnonzero(y == c)[:1] for c in range(len(class_names))]
    picks = np.concatenate(firsts)[: int(params["preview_samples"])]
    originals = x[picks]
    variants = [materialize(policy, originals, 1, int(rng.integers(2**31)), 1, progress=False) for _ in range(4)]
    preview_grid(originals, variants, [class_names[int(y[i])] for i in picks], paths.augment_preview)
    return [paths.augmented, paths.augment_policy, paths.augment_preview]


if __name__ == "__main__":
    run_stage("augment", main)
