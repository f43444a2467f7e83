"""Stage augment: the training split -> augment.copies seeded augmented copies, the policy and a preview."""

import logging

import numpy as np

from imgclf.augmentation import build_policy, materialize, preview_grid, save_policy
from imgclf.io import PipelineError, read_json, read_npy, write_npy
from imgclf.stage import run_stage

log = logging.getLogger(__name__)


def main(params, paths):
    x, y = read_npy(paths.preprocessed_x("train")), read_npy(paths.preprocessed_y("train"))
    class_names = read_json(paths.preprocessed_meta)["class_names"]
    if len(x) == 0:
        raise PipelineError("the training split is empty: nothing to augment (see reports/validation.md)")
    policy = build_policy(params["policy"], x.shape[1:3])
    save_policy(policy, paths.augment_policy)
    copies, seed = int(params["copies"]), int(params["seed"])
    log.info("augmenting %d training images x %d copies with %d transforms", len(x), copies, len(policy.transforms))
    augmented = materialize(policy, x, copies, seed, params["workers"])
    source_index = np.tile(np.arange(len(x), dtype=np.int64), copies)
    write_npy(paths.augmented_x, augmented)
    write_npy(paths.augmented_y, np.asarray(y)[source_index])
    write_npy(paths.augmented_source, source_index)

    # preview: a few originals, one per class where possible, beside up to 4 fresh augmentations
    rng = np.random.default_rng(seed)
    firsts = [np.flatnonzero(np.asarray(y) == c)[:1] for c in range(len(class_names))]
    picks = np.concatenate(firsts)[: int(params["preview_samples"])]
    originals = np.asarray(x[picks])
    variants = [materialize(policy, originals, 1, int(rng.integers(2**31)), 1, progress=False) for _ in range(4)]
    preview_grid(originals, variants, [class_names[int(y[i])] for i in picks], paths.augment_preview)
    return [paths.augmented_x, paths.augment_policy, paths.augment_preview]


if __name__ == "__main__":
    run_stage("augment", main)
